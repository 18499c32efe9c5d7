"""Write a synthetic livestream: an mp4 with a known product schedule, its shop folder and schedule.json.

    python tools/make_synthetic_livestream.py --output_dir data/livestream [--minutes 5] [--width 1280 --height 720]

The schedule (dataloaders/synthetic_livestream.py): product segments of random
length, cross-fade transitions, idle stretches without a product, products
that come back. Score a recogniser's timeline against it with
tools/score_timeline.py.
"""
import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="writes live.mp4, shop/ and schedule.json there")
    p.add_argument("--seed", type=int, default=0, help="everything is a function of the seed (default: 0)")
    p.add_argument("--minutes", type=float, default=2.0, help="length of the stream (default: 2)")
    p.add_argument("--products", type=int, default=6, help="products in the shop (default: 6)")
    p.add_argument("--fps", type=int, default=5, help="frame rate of the mp4 (default: 5)")
    p.add_argument("--width", type=int, default=96, help="frame width, even (default: 96)")
    p.add_argument("--height", type=int, default=96, help="frame height, even (default: 96)")
    p.add_argument("--segment_s", type=float, nargs=2, default=[8.0, 30.0], metavar=("MIN", "MAX"),
                   help="shortest and longest segment, seconds (default: 8 30)")
    p.add_argument("--idle_fraction", type=float, default=0.2,
                   help="chance that a segment is an idle stretch without a product (default: 0.2)")
    p.add_argument("--renders_per_s", type=float, default=2.0,
                   help="new scene pictures per second, held in between (default: 2)")
    p.add_argument("--image_size", type=int, default=96, help="side of the shop images (default: 96)")
    p.add_argument("--categories", type=int, default=3,
                   help="product categories in the shop; products of one category differ in detail (default: 3)")
    p.add_argument("--style", choices=("scene", "card"), default="scene",
                   help="scene: the product in a cluttered room (default); card: its shop image shown large")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.width % 2 or args.height % 2 or args.width < 16 or args.height < 16:
        build_parser().error(f"--width/--height must be even and >= 16, got {args.width}x{args.height}")
    from dataloaders.synthetic_livestream import make_synthetic_livestream

    start = time.perf_counter()
    paths = make_synthetic_livestream(args.output_dir, seed=args.seed, duration_s=60 * args.minutes,
                                      num_products=args.products, fps=args.fps, width=args.width, height=args.height,
                                      segment_s=tuple(args.segment_s), idle_fraction=args.idle_fraction,
                                      renders_per_s=args.renders_per_s, image_size=args.image_size,
                                      categories=args.categories, style=args.style)
    print(f"wrote {paths['video']}, {paths['shop']} and {paths['schedule']} in {time.perf_counter() - start:.1f} s")
    return paths


if __name__ == "__main__":
    main()
