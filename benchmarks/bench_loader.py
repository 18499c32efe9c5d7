"""Training-loader throughput: clips/s (10 frames + 1 shop image per sample) with 0, 1, 2 workers.

    python benchmarks/bench_loader.py [--data_dir DIR] [--image_size 224] [--batch_size 32]

Unless --data_dir points at a make_synthetic_data.py output (its lpr4m/ is used), writes a
small synthetic set with 10-frame clips at --source_size px (LPR4M files have a shorter side
of 256) in a temporary folder. Prints one line per worker count; not a test.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.utils.data import DataLoader  # noqa: E402

from dataloaders.datasets import PairDataset, collate_samples  # noqa: E402
from dataloaders.lpr4m import load_lpr4m_train  # noqa: E402
from dataloaders.synthetic import make_synthetic_dataset  # noqa: E402
from dataloaders.transforms import build_transform  # noqa: E402


def clips_per_second(dataset, workers: int, batch_size: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate_samples, drop_last=True, persistent_workers=False)
    it = iter(loader)
    next(it)                                        # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            n += len(next(it)["index"])
        except StopIteration:
            break
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="a make_synthetic_data.py output (default: generate one)")
    p.add_argument("--image_size", type=int, default=224, help="model input resolution")
    p.add_argument("--source_size", type=int, default=256, help="side of the generated files")
    p.add_argument("--style", default="v1", choices=["v1", "v2"])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        if args.data_dir is None:
            make_synthetic_dataset(tmp, image_size=args.source_size, num_train_lives=8, num_val_lives=1,
                                   num_test_lives=1, min_frames=10, max_frames=10,
                                   mf_train_products=1, mf_test_products=1)
        pairs = load_lpr4m_train(Path(data_dir) / "lpr4m")
        t = build_transform(args.style, train=True, image_size=args.image_size)
        dataset = PairDataset(pairs, t, t, max_frames=10)
        print(f"{len(pairs)} pairs, {args.style} transform at {args.image_size} px, batch {args.batch_size}")
        results = {}
        for w in args.workers:
            results[w] = clips_per_second(dataset, w, args.batch_size, args.batches)
            print(f"workers={w}: {results[w]:.1f} clips/s ({11 * results[w]:.0f} images/s)")
    return results


if __name__ == "__main__":
    main()
