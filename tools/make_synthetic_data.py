"""Write the synthetic LPR750K-layout and MovingFashion-layout datasets.

    python tools/make_synthetic_data.py --output_dir data/synthetic [--seed 0] [--image_size 96] ...

Every option below maps to a field of `dataloaders.synthetic.SyntheticConfig`.
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.synthetic import SyntheticConfig, make_synthetic_dataset  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="writes OUTPUT_DIR/lpr4m and OUTPUT_DIR/movingfashion")
    p.add_argument("--seed", type=int, default=0)
    for f in dataclasses.fields(SyntheticConfig):
        if isinstance(f.default, tuple):
            p.add_argument(f"--{f.name}", type=int, nargs=2, default=list(f.default), metavar=("MIN", "MAX"))
        else:
            p.add_argument(f"--{f.name}", type=int, default=f.default)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)}
    options["mf_seconds"] = tuple(options["mf_seconds"])
    start = time.perf_counter()
    paths = make_synthetic_dataset(args.output_dir, seed=args.seed, progress=True, **options)
    print(f"wrote {paths['lpr4m']} and {paths['movingfashion']} in {time.perf_counter() - start:.1f} s")
    return paths


if __name__ == "__main__":
    main()
