"""Decoding and resizing, exact (the default) against the opt-in modes: time, pixels and, optionally, R@K.

    python benchmarks/bench_decode.py [--repeats 30] [--recall [--train_steps 300]]

Per image, one torch thread, the eval transforms v1 and v2 at 224 px, for each `--decode` mode:
  exact  whole JPEG decode with PIL, the release's PIL resize (the default);
  draft  PIL draft mode: large JPEGs decoded at a reduced DCT scale (also `--fast_decode`);
  tv     torchvision.io.decode_jpeg + torchvision.transforms.v2.functional.resize on uint8 (antialias).
Images: photo-like JPEGs (dataloaders/synthetic_photo.py, quality 90) at 455x256 (an LPR4M frame,
short side 256; mean over 8 images) and 1280x720, and a real photograph (matplotlib's sample
`grace_hopper.jpg`) at 455x256, 1280x720 and 1000x1000. How far a mode's model input is from
exact: mean and max absolute difference in grey levels (0-255) over all pixels.

Also checked: whether resizing only the region a crop keeps (PIL `resize(box=...)`) gives the
same pixels as resize-then-crop, over many image sizes and crops, and its time (if it were
identical and faster, the exact path could use it).

With --recall: a small model is trained on a synthetic set with 256-px frames (exact decode),
then evaluated with lpr4m_embedding_eval.py in each mode; prints R1/R5/R10 per mode and how many
queries' top-1 image changed against exact.

The LAST line: exact_ms=... draft_ms=... tv_ms=... (455x256 photo-like frame, v1) tv_mean_grey=...
tv_max_grey=... draft_mean_grey=... draft_max_grey=... box_identical=K/N [R1_exact=... R1_tv=...
R1_draft=... top1_changed_tv=... top1_changed_draft=...].
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

MODES = ("exact", "draft", "tv")
IMAGES = [  # (name, kind, size, how many different images)
    ("frame 455x256", "photo-like", (455, 256), 8),
    ("frame 1280x720", "photo-like", (1280, 720), 2),
    ("frame 455x256", "photograph", (455, 256), 1),
    ("frame 1280x720", "photograph", (1280, 720), 1),
    ("shop 1000x1000", "photograph", (1000, 1000), 1),
]


def write_images(folder: Path, kind: str, size: tuple[int, int], count: int) -> list[str]:
    import matplotlib
    import numpy as np
    from PIL import Image

    from dataloaders.synthetic_photo import photo_like

    paths = []
    for i in range(count):
        if kind == "photo-like":
            img = photo_like(np.random.default_rng((1, i)), *size)
        else:
            with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as photo:
                img = photo.convert("RGB").resize(size, Image.BICUBIC)
        path = folder / f"{kind}_{size[0]}x{size[1]}_{i}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def time_and_pixels(paths: list[str], style: str, repeats: int) -> dict:
    """Per mode: ms per image (decode + transform) and grey-level distance of its output to exact."""
    import torch

    from dataloaders.transforms import build_transform

    out = {}
    exact_outputs = None
    for mode in MODES:
        transform = build_transform(style, train=False, image_size=224, decode=mode)
        outputs = [transform.read(p) for p in paths]  # also warms up
        start = time.perf_counter()
        for _ in range(repeats):
            for p in paths:
                transform.read(p)
        ms = 1000 * (time.perf_counter() - start) / (repeats * len(paths))
        if exact_outputs is None:
            exact_outputs = outputs
        diff = torch.cat([(a.int() - b.int()).abs().flatten() for a, b in zip(outputs, exact_outputs)]).float()
        out[mode] = {"ms": ms, "mean_grey": float(diff.mean()), "max_grey": float(diff.max())}
    return out


def box_resize_check(repeats: int) -> dict:
    """PIL resize of only the kept region (box=) against resize-then-crop: identical cases and time."""
    import numpy as np
    from PIL import Image

    from dataloaders.synthetic_photo import photo_like

    base = photo_like(np.random.default_rng(7), 700, 500)
    identical = total = 0
    for w in range(200, 700, 37):
        for h in range(180, 500, 41):
            img = base.resize((w, h))
            for r, s, resample in ((256, 224, Image.BILINEAR), (73, 64, Image.BILINEAR), (224, 224, Image.BICUBIC)):
                full = img.resize((r, r), resample)
                for top, left in ((16, 16), (0, 0), (r - s, r - s), (3, 11)):
                    if top > r - s or left > r - s:
                        continue
                    crop = np.asarray(full.crop((left, top, left + s, top + s)))
                    box = (left * w / r, top * h / r, (left + s) * w / r, (top + s) * h / r)
                    identical += np.array_equal(crop, np.asarray(img.resize((s, s), resample, box=box)))
                    total += 1
    frame = base.resize((455, 256))
    start = time.perf_counter()
    for _ in range(repeats):
        frame.resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
    full_ms = 1000 * (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        frame.resize((224, 224), Image.BILINEAR, box=(16 * 455 / 256, 16, 240 * 455 / 256, 240))
    box_ms = 1000 * (time.perf_counter() - start) / repeats
    return {"identical": identical, "total": total, "full_ms": full_ms, "box_ms": box_ms}


def recall_by_mode(tmp: Path, train_steps: int) -> dict:
    """Train a small model on 256-px synthetic frames, evaluate it in every decode mode."""
    import lpr4m_embedding_eval
    import lpr4m_train
    from dataloaders.synthetic import make_synthetic_dataset

    data = tmp / "synthetic"
    make_synthetic_dataset(data, seed=0, image_size=256, num_test_lives=6)
    model = lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(data / "lpr4m"), "--model_config", "tiny",
                              "--max_steps", str(train_steps), "--batch_size", "16", "--lr", "1e-3", "--coef_lr", "1",
                              "--no_progress", "--no_tensorboard", "--output_dir", str(tmp / "run")])["model_path"]
    found = {}
    for mode in MODES:
        out = tmp / f"eval_{mode}"
        metrics = lpr4m_embedding_eval.main(["--data_root", str(data / "lpr4m"), "--ckpt_path", model, "--output_dir",
                                             str(out), "--embedding_sim", "--decode", mode, "--no_progress"])
        top1 = [json.loads(line)["ranking"][0]["image_id"] if json.loads(line)["ranking"] else None
                for line in (out / "rankings.jsonl").read_text().splitlines()]
        found[mode] = {"recall": metrics["embedding"], "top1": top1}
    for mode in MODES:
        found[mode]["top1_changed"] = sum(a != b for a, b in zip(found[mode]["top1"], found["exact"]["top1"]))
    return found


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed passes over the images per mode")
    p.add_argument("--recall", action="store_true", help="also train a small model and compare R@K per mode")
    p.add_argument("--train_steps", type=int, default=300, help="with --recall: training steps of the model")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, size, count in IMAGES:
            paths = write_images(Path(tmp), kind, size, count)
            for style in ("v1", "v2"):
                rows.append({"image": name, "kind": kind, "style": style,
                             **time_and_pixels(paths, style, max(1, args.repeats // count))})
        box = box_resize_check(args.repeats)
        recall = recall_by_mode(Path(tmp), args.train_steps) if args.recall else None

    print(f"{'image':15s} {'kind':10s} {'style':5s} " + " ".join(f"{m + ' ms':>9s}" for m in MODES)
          + " " + " ".join(f"{m + ' grey mean/max':>19s}" for m in MODES[1:]))
    for r in rows:
        print(f"{r['image']:15s} {r['kind']:10s} {r['style']:5s} " + " ".join(f"{r[m]['ms']:9.2f}" for m in MODES)
              + " " + " ".join(f"{r[m]['mean_grey']:12.3f} / {r[m]['max_grey']:3.0f}" for m in MODES[1:]))
    print("(grey: |mode - exact| of the 224-px uint8 model input, over all pixels; one torch thread)")
    print(f"PIL resize of the cropped region only (box=): identical to resize-then-crop in {box['identical']} of "
          f"{box['total']} cases; v2 eval of a 455x256 frame {box['full_ms']:.3f} ms resize+crop, "
          f"{box['box_ms']:.3f} ms box resize")
    if recall:
        print(f"R@K on the synthetic test split, tiny model trained {args.train_steps} steps on 256-px frames:")
        for mode in MODES:
            rk = recall[mode]["recall"]
            print(f"  {mode:5s}: R1 {rk['R1']:.2f} R5 {rk['R5']:.2f} R10 {rk['R10']:.2f}, top-1 changed for "
                  f"{recall[mode]['top1_changed']} of {len(recall[mode]['top1'])} queries")
    head = rows[0]
    last = (f"exact_ms={head['exact']['ms']:.3f} draft_ms={head['draft']['ms']:.3f} tv_ms={head['tv']['ms']:.3f} "
            f"tv_mean_grey={head['tv']['mean_grey']:.4f} tv_max_grey={head['tv']['max_grey']:.0f} "
            f"draft_mean_grey={head['draft']['mean_grey']:.4f} draft_max_grey={head['draft']['max_grey']:.0f} "
            f"box_identical={box['identical']}/{box['total']}")
    if recall:
        last += "".join(f" R1_{m}={recall[m]['recall']['R1']:.2f}" for m in MODES)
        last += "".join(f" top1_changed_{m}={recall[m]['top1_changed']}" for m in MODES[1:])
    print(last)
    return {"rows": rows, "box": box, "recall": recall}


if __name__ == "__main__":
    main(sys.argv[1:])
