"""Training-loader throughput per core: clips/s (10 frames + 1 shop image per clip) on photo-like JPEGs.

    python benchmarks/bench_loader.py [--clips 32] [--batch_size 16] [--batches 10] [--workers 0 1]

Writes photo-like JPEG clips (dataloaders/synthetic_photo.py: 455x256 frames, 256x256 shop
images, quality 90) in a temporary folder and reads them with the training dataset
(`PairDataset`, v1 transform at 224 px unless --style/--image_size say otherwise), side by side:

  old    the loader before uint8 batches: whole decode, PIL resize, float32 CLIP-normalised
         pixels in the batch (a copy of that code is kept below, `OldTransform`);
  exact  today's default: the same decode and resize, uint8 pixels (the model normalises them);
  fast   `--decode tv`: torchvision's JPEG decoder and uint8 antialiased resize.

Each is timed with 0 workers (the process itself decodes: one core does everything) and
1 worker (one core decodes; batches cross shared memory to the main process). torch uses one
thread, so every figure is per core. Also printed: the bytes of one batch, which is what a
worker puts in shared memory per batch, for fp32 and uint8, and what starting a worker adds to
an epoch's first batch (what `--persistent_workers` saves per epoch), forked from this process
and from a fork server (how the workers of a process in a torch.distributed group start,
`dataloaders.datasets.worker_context`; the server's own start, once per process, is left out).
The LAST line holds the figures with 1 worker (or 0 if only that was measured):
    old_clips_s_core=... exact_clips_s_core=... fast_clips_s_core=... fast_speedup=... exact_speedup=...
    workers=1 worker_start_s=... worker_start_forkserver_s=...

Sources (`--sources`, both by default, side by side in one run): "files" (the JPEG files
themselves) and "shards" (the same clips packed by tools/pack_shards.py into tar shards, read
by `ShardPairDataset`: one pread per member instead of an open per file). With both, the last
line also holds `shards_exact_clips_s_core=...` and `shards_fast_clips_s_core=...`.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATHS = ("old", "exact", "fast")


def old_transform_class():
    """The transform as it was before uint8 batches (whole decode with a copy, PIL resize, numpy
    normalisation to float32), with the interface `PairDataset` calls today."""
    import numpy as np
    import torch
    import torchvision.transforms.functional as TF
    from PIL import Image

    from dataloaders.transforms import ImageTransform

    mean, std = np.asarray(CLIP_MEAN, dtype=np.float32), np.asarray(CLIP_STD, dtype=np.float32)

    class OldTransform(ImageTransform):
        def read(self, path, rng=None):
            with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as img:
                return self(img.convert("RGB"), rng)

        def __call__(self, img, rng=None):
            s, r = self.image_size, self.resize_size
            img = TF.resize(img, [r, r], interpolation=self.interpolation)
            if self.style == "v2" and self.train:
                top, left = int(rng.integers(0, r - s + 1)), int(rng.integers(0, r - s + 1))
                img = TF.crop(img, top, left, s, s)
                if rng.random() < 0.5:
                    img = TF.hflip(img)
            else:
                img = TF.center_crop(img, [s, s])
            arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    return OldTransform


def files_source(args, clips: list[tuple[list[str], str]], transform):
    """The clips as JPEG files: `PairDataset` over TrainPairs, repeated to fill the measured batches."""
    from dataloaders.datasets import PairDataset
    from dataloaders.records import TrainPair

    pairs = [TrainPair(f"c{i}", frames, f"i{i}", shop) for i, (frames, shop) in enumerate(clips)]
    needed = (args.batches + 1) * args.batch_size
    pairs = (pairs * (needed // len(pairs) + 1))[:needed]
    return PairDataset(pairs, transform, transform, max_frames=10, seed=0)


def shards_source(args, clips: list[tuple[list[str], str]], transform):
    """The same clips packed into tar shards (release layout -> tools/pack_shards.py), read by
    `ShardPairDataset`, its samples repeated to fill the measured batches."""
    from torch.utils.data import Subset

    from dataloaders.shard_format import ShardSet
    from dataloaders.shards import ShardPairDataset
    from tools.pack_shards import main as pack_main

    root = Path(clips[0][1]).parents[1]  # write_photo_clips' folder
    shards = root / "shards"
    if not (shards / "manifest.json").exists():
        lines = []
        for i, (frames, shop) in enumerate(clips):
            rel = [str(Path(f).relative_to(root)) for f in frames]
            lines.append(f"c{i}\t{rel!r}\t[]\ti{i}\t{Path(shop).relative_to(root)}\n")
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"training_videoinfo_{len(clips)}.txt").write_text("".join(lines))
        pack_main(["--data_root", str(root), "--output_dir", str(shards), "--samples_per_shard", "8", "--workers", "1"])
    dataset = ShardPairDataset(ShardSet(str(shards)), transform, transform, max_frames=10, seed=0)
    needed = (args.batches + 1) * args.batch_size
    return Subset(dataset, [i % len(dataset) for i in range(needed)])


SOURCES = {"files": files_source, "shards": shards_source}  # name -> function(args, clips, transform) -> dataset


def build_transform_for(path: str, style: str, image_size: int):
    from dataloaders.transforms import build_transform

    if path == "old":
        return old_transform_class()(style, train=True, image_size=image_size)
    return build_transform(style, train=True, image_size=image_size, decode="tv" if path == "fast" else "exact")


def clips_per_second(dataset, workers: int, batch_size: int, batches: int) -> tuple[float, int]:
    """Clips/s over `batches` batches after the first (worker start-up is not throughput), and the
    bytes of one batch's tensors."""
    from torch.utils.data import DataLoader

    from dataloaders.datasets import collate_samples

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_samples, drop_last=True)
    it = iter(loader)
    first = next(it)
    nbytes = sum(v.nbytes for v in first.values() if hasattr(v, "nbytes"))
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["index"])
    return n / (time.perf_counter() - start), nbytes


def second_epoch_start(dataset, persistent: bool, batch_size: int, repeats: int = 3, forkserver: bool = False) -> float:
    """Seconds from a new epoch's iterator to its first batch, 1 worker, epochs of one batch: with
    fresh workers this includes starting a worker, with persistent ones it does not. `forkserver`:
    the worker comes from the training loaders' fork server instead of a fork of this process."""
    from torch.utils.data import DataLoader, Subset

    from dataloaders.datasets import collate_samples, fork_server_context

    context = fork_server_context() if forkserver else None
    loader = DataLoader(Subset(dataset, range(batch_size)), batch_size=batch_size, num_workers=1,
                        persistent_workers=persistent, collate_fn=collate_samples, multiprocessing_context=context)
    list(loader)  # the first epoch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        list(loader)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32, help="distinct clips written (10 frames + 1 shop image each)")
    p.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=["files", "shards"],
                   help="how the clips are stored (each measured, side by side)")
    p.add_argument("--image_size", type=int, default=224, help="model input resolution")
    p.add_argument("--style", default="v1", choices=["v1", "v2"], help="the training transform")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=10, help="timed batches per measurement (after one warm-up)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1], choices=[0, 1],
                   help="0: the process decodes; 1: one worker decodes (per-core figures either way)")
    args = p.parse_args(argv)

    import torch

    from dataloaders.synthetic_photo import write_photo_clips

    torch.set_num_threads(1)
    results: dict[tuple[str, str, int], float] = {}
    batch_bytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clips = write_photo_clips(tmp, args.clips, frames=10)
        print(f"{args.clips} photo-like clips (10 frames 455x256 + shop 256x256, JPEG q90), "
              f"{args.style} train transform at {args.image_size} px, batch {args.batch_size}, one torch thread")
        for w in args.workers:
            for source in args.sources:
                for path in PATHS:
                    dataset = SOURCES[source](args, clips, build_transform_for(path, args.style, args.image_size))
                    results[source, path, w], batch_bytes[path] = clips_per_second(dataset, w, args.batch_size,
                                                                                   args.batches)
                    print(f"workers={w} {source:6s} {path:5s}: {results[source, path, w]:7.1f} clips/s per core "
                          f"({11 * results[source, path, w]:6.0f} images/s)")
        dataset = SOURCES[args.sources[0]](args, clips, build_transform_for("exact", args.style, args.image_size))
        starts = {persistent: second_epoch_start(dataset, persistent, args.batch_size) for persistent in (False, True)}
        served = second_epoch_start(dataset, False, args.batch_size, forkserver=True)
    print(f"an epoch's first batch, 1 worker: {starts[False]:.3f} s with a new worker, {starts[True]:.3f} s with "
          f"--persistent_workers (a worker's start: {starts[False] - starts[True]:.3f} s); {served:.3f} s with a new "
          f"worker from a fork server (its start: {served - starts[True]:.3f} s)")
    for path in PATHS:
        print(f"batch of {args.batch_size} clips, {path:5s}: {batch_bytes[path] / 2**20:.1f} MiB in shared memory")
    b, s = 48, args.image_size  # the README's rank-batch: 48 clips x (10 frames + 1 image)
    print(f"a rank-batch of {b} clips x 11 images at {s} px: {b * 11 * 3 * s * s / 2**20:.0f} MiB uint8, "
          f"{4 * b * 11 * 3 * s * s / 2**20:.0f} MiB float32")
    w = 1 if 1 in args.workers else 0
    first = args.sources[0]
    old, exact, fast = (results[first, path, w] for path in PATHS)
    line = (f"old_clips_s_core={old:.1f} exact_clips_s_core={exact:.1f} fast_clips_s_core={fast:.1f} "
            f"fast_speedup={fast / old:.2f} exact_speedup={exact / old:.2f} workers={w} source={first} "
            f"worker_start_s={starts[False] - starts[True]:.3f} worker_start_forkserver_s={served - starts[True]:.3f}")
    for source in args.sources[1:]:
        line += "".join(f" {source}_{path}_clips_s_core={results[source, path, w]:.1f}" for path in ("exact", "fast"))
    print(line)
    return results


if __name__ == "__main__":
    main()
