"""Exact JPEG decoding (the default) against draft-mode decoding (`--fast_decode`): time and pixels.

A real photograph (matplotlib's sample `grace_hopper.jpg`) is resized to the sizes that matter and
saved as JPEG (quality 90): 455x256 (an LPR4M frame: short side 256), 1280x720 (a 720p frame) and
1000x1000 (a large shop image). For each, per image: decode + the v1 and v2 eval transforms at 224 px,
exact (whole decode) and fast (draft mode), the CPU time, and how far the fast path's model input is
from the exact one, in grey levels (0-255) of the resized image: mean and max absolute difference.

    python benchmarks/bench_decode.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

SIZES = {"frame 455x256": (455, 256), "frame 1280x720": (1280, 720), "shop image 1000x1000": (1000, 1000)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed decodes per image and path")
    args = p.parse_args(argv)

    import matplotlib
    import torch
    from PIL import Image

    from dataloaders.transforms import build_transform, load_rgb

    torch.set_num_threads(1)
    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in SIZES.items():
            path = str(Path(tmp) / "image.jpg")
            photo.resize(size, Image.BICUBIC).save(path, quality=90)
            for style in ("v1", "v2"):
                out, seconds = {}, {}
                for fast in (False, True):
                    transform = build_transform(style, train=False, image_size=224, fast_decode=fast)
                    start = time.perf_counter()
                    for _ in range(args.repeats):
                        x = transform(load_rgb(path, transform.decode_size))
                    seconds[fast] = (time.perf_counter() - start) / args.repeats
                    out[fast] = x
                diff = (out[True].int() - out[False].int()).abs().float()  # uint8 model inputs
                rows.append({"image": name, "style": style, "exact_ms": 1000 * seconds[False],
                             "fast_ms": 1000 * seconds[True], "mean_grey": float(diff.mean()),
                             "max_grey": float(diff.max())})
    print(f"{'image':22s} {'style':5s} {'exact ms':>9s} {'fast ms':>8s} {'mean diff':>10s} {'max diff':>9s}")
    for r in rows:
        print(f"{r['image']:22s} {r['style']:5s} {r['exact_ms']:9.2f} {r['fast_ms']:8.2f} {r['mean_grey']:10.2f} "
              f"{r['max_grey']:9.1f}")
    print("(diff: |fast - exact| of the model input, in grey levels 0-255; one CPU thread)")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
