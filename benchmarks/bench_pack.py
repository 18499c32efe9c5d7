"""Packing into shards: time and disk per million clips (tools/pack_shards.py).

    python benchmarks/bench_pack.py --clips 2000 --frames 118 [--workers 8] [--workdir /fast/disk]

Generates N clips of F photo-like frames in the LPR750K release layout (crops of a real
photograph, matplotlib's `grace_hopper.jpg`, moved and re-lit from frame to frame, resized to
a shorter side of 256 with the aspect kept and saved at JPEG quality 95, as img2dataset
writes them) plus a shop image per clip, then packs them with tools/pack_shards.py (default
shard size) and measures the wall time of the pack alone and the bytes it wrote. The source
files were just written, so they are read from the page cache: on a cold disk the reads
of the sources add their own time. The LAST line printed is
    clips=N frames=F pack_s=... disk_mb=... per_million_clips_h=... per_million_clips_gb=...
(F: frames packed in all; per million clips: pack_s and disk scaled linearly).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))


def photo_frames(photo, count: int, rng, short: int = 256, aspect: float = 16 / 9):
    """`count` frames of one clip: a crop of the photograph that drifts and changes light."""
    import numpy as np
    from PIL import Image, ImageEnhance

    w, h = photo.size
    cw, ch = int(w * 0.7), int(w * 0.7 / aspect) if w / aspect < h else h
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    light = rng.uniform(0.8, 1.2)
    out = []
    for _ in range(count):
        x = int(np.clip(x + rng.integers(-6, 7), 0, w - cw))
        y = int(np.clip(y + rng.integers(-6, 7), 0, h - ch))
        light = float(np.clip(light + rng.normal(0, 0.02), 0.6, 1.4))
        crop = photo.crop((x, y, x + cw, y + ch))
        size = (round(short * cw / ch), short) if cw >= ch else (short, round(short * ch / cw))
        out.append(ImageEnhance.Brightness(crop.resize(size, Image.BICUBIC)).enhance(light))
    return out


def generate(root: Path, clips: int, frames: int, seed: int = 0) -> None:
    """The release layout: annotations/training_videoinfo_N.txt, training_video_01/, training_image/."""
    import matplotlib
    import numpy as np
    from PIL import Image

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "training_image").mkdir()
    lines = []
    for c in range(clips):
        clip_id = f"live{c // 12:06d}-{c * 1000}-{c * 1000 + frames * 1000}"
        folder = root / "training_video_01" / clip_id
        folder.mkdir(parents=True)
        rel = []
        for k, img in enumerate(photo_frames(photo, frames, rng)):
            name = f"training_video_01/{clip_id}/{clip_id}-{k:04d}.jpg"
            img.save(root / name, quality=95)
            rel.append(name)
        image_id = f"image{c:08d}"
        photo_frames(photo, 1, rng, short=256, aspect=1.0)[0].save(root / "training_image" / f"{image_id}.jpg",
                                                                   quality=95)
        lines.append(f"{clip_id}\t{rel!r}\t[]\t{image_id}\ttraining_image/{image_id}.jpg\n")
    (root / "annotations" / f"training_videoinfo_{clips}.txt").write_text("".join(lines))


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=200, help="clips to generate and pack")
    p.add_argument("--frames", type=int, default=118, help="frames per clip (LPR4M: ~118 on average)")
    p.add_argument("--workers", type=int, default=None, help="packing processes (default: the packer's)")
    p.add_argument("--samples_per_shard", type=int, default=None,
                   help="clips per shard (default: the packer's, ~1 GB shards); smaller gives several shards, "
                   "so several --workers, with few clips")
    p.add_argument("--workdir", help="folder for the generated data and shards (default: a temporary folder)")
    args = p.parse_args(argv)
    from tools.pack_shards import main as pack_main

    work = Path(tempfile.mkdtemp(prefix="bench_pack_", dir=args.workdir))
    try:
        data, shards = work / "data", work / "shards"
        start = time.perf_counter()
        generate(data, args.clips, args.frames)
        print(f"generated {args.clips} clips x {args.frames} frames in {time.perf_counter() - start:.1f} s "
              f"({disk_bytes(data) / 2**20:.1f} MB)")
        # the annotation store is built before timing: training builds it once too, not per pack
        from dataloaders.lpr4m import load_lpr4m_train
        load_lpr4m_train(data)
        os.sync()
        start = time.perf_counter()
        argv = ["--data_root", str(data), "--output_dir", str(shards)]
        argv += ["--workers", str(args.workers)] if args.workers else []
        argv += ["--samples_per_shard", str(args.samples_per_shard)] if args.samples_per_shard else []
        result = pack_main(argv)
        pack_s = time.perf_counter() - start
        disk = disk_bytes(shards)
        frames = sum(s["frames"] for s in result["manifest"]["shards"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scale = 1e6 / args.clips
    figures = {"clips": args.clips, "frames": frames, "pack_s": round(pack_s, 2), "disk_mb": round(disk / 1e6, 1),
               "per_million_clips_h": round(pack_s * scale / 3600, 2),
               "per_million_clips_gb": round(disk * scale / 1e9, 1)}
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


if __name__ == "__main__":
    main()
