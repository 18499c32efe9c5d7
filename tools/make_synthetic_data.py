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

HELP = {
    "num_train_lives": "livestreams whose clips go to the training TSV",
    "num_val_lives": "livestreams for training_videoinfo_val.txt",
    "num_test_lives": "livestreams (shops) of the test queries and galleries",
    "products_per_shop": "products in each livestream's shop",
    "categories_per_shop": "categories per shop; products of a category differ only in detail",
    "clips_per_product": "training clips per product",
    "test_clips_per_product": "query clips per test product",
    "min_frames": "fewest frames in a clip",
    "max_frames": "most frames in a clip (queries keep at most 10)",
    "image_size": "side in pixels of every frame and shop image",
    "mf_train_products": "MovingFashion training products",
    "mf_test_products": "MovingFashion test products (one video each)",
    "mf_videos_per_product": "videos per MovingFashion training product",
    "mf_seconds": "shortest and longest MovingFashion video, in seconds",
    "mf_fps": "frame rate of the written mp4 files",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="writes OUTPUT_DIR/lpr4m and OUTPUT_DIR/movingfashion")
    p.add_argument("--seed", type=int, default=0)
    for f in dataclasses.fields(SyntheticConfig):
        if isinstance(f.default, tuple):
            p.add_argument(f"--{f.name}", type=int, nargs=2, default=list(f.default), metavar=("MIN", "MAX"),
                           help=f"{HELP[f.name]} (default: {f.default[0]} {f.default[1]})")
        else:
            p.add_argument(f"--{f.name}", type=int, default=f.default, help=f"{HELP[f.name]} (default: {f.default})")
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
