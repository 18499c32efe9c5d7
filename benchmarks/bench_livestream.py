"""Livestream recognition speed and memory: one hour of 720p video at 1 fps, decode and model apart.

    python benchmarks/bench_livestream.py                           # 2 min of 720p30, ViT-B/32, bf16/fp32
    python benchmarks/bench_livestream.py --minutes 10 --rss_minutes 10 60

1. writes N minutes of synthetic 720p livestream (tools' generator, 30 fps
   H.264, a new scene twice a second: less motion than a real stream, so real
   streams can decode slower) and times the streaming decode at --fps with
   the preprocessing (frame -> RGB -> model input) and the report's
   thumbnail spool, no model;
2. times the model on the sampled frames: ViT-B/32 (random weights: the
   speed is the same) in batches of --batch_size, pooling and scoring
   included, on frames decoded beforehand;
3. extrapolates both to one hour (linear in the video's length: every frame
   is decoded, every sampled frame embedded) and says so in the output;
4. peak RSS of the whole recogniser pass (a fresh process each) on videos of
   each --rss_minutes length: bounded memory shows as equal figures.

The last line holds every figure as key=value. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="video timed for decode and model (default: 2)")
    p.add_argument("--rss_minutes", type=float, nargs="*", default=[2.0, 12.0],
                   help="video lengths whose peak RSS is measured (default: 2 12; 10 60 compares ten minutes with an hour)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--video_fps", type=int, default=30, help="frame rate of the generated video")
    p.add_argument("--fps", type=float, default=1.0, help="sampling rate of the recogniser")
    p.add_argument("--model_config", default="ViT-B/32", help="vision tower shape (tiny for a smoke run)")
    p.add_argument("--precision", default=None, help="fp32 / bf16 (default: bf16 where native, else fp32)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--products", type=int, default=100, help="shop size")
    p.add_argument("--workdir", default=None, help="keep generated videos here (default: a temporary folder)")
    p.add_argument("--rss_child", nargs=2, metavar=("VIDEO", "SHOP"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _recognizer(args):
    import torch

    from modules.config import VISION_CONFIGS
    from modules.rice import RICEConfig, RICEModel
    from recognition.api import Recognizer, default_precision

    torch.manual_seed(0)
    model = RICEModel(RICEConfig(VISION_CONFIGS[args.model_config]))
    device = torch.device("cpu")
    return Recognizer(model, device, args.precision or default_precision(device))


def _video(workdir: Path, minutes: float, args, products: int) -> dict:
    from dataloaders.synthetic_livestream import make_synthetic_livestream

    out = workdir / f"live_{minutes:g}min_{args.width}x{args.height}"
    if not (out / "schedule.json").is_file():
        make_synthetic_livestream(out, seed=0, duration_s=60 * minutes, num_products=products, fps=args.video_fps,
                                  width=args.width, height=args.height, image_size=224)
    return {"video": str(out / "live.mp4"), "shop": str(out / "shop")}


def rss_child(args) -> None:
    from recognition.livestream import score_livestream

    rec = _recognizer(args)
    done = score_livestream(rec, args.rss_child[0], args.rss_child[1], fps=args.fps, batch_size=args.batch_size,
                            progress=False, keep_frames=True)
    done.frames.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_mb": round(peak_mb, 1), "windows": len(done.windows.starts)}))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return {}
    import torch

    from recognition.video import sample_frames

    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    rec = _recognizer(args)
    start = time.perf_counter()
    paths = _video(workdir, args.minutes, args, args.products)
    print(f"generated {args.minutes:g} min of {args.width}x{args.height} at {args.video_fps} fps in "
          f"{time.perf_counter() - start:.0f} s")

    # 1. decode + preprocessing + the report's thumbnail spool (as the recogniser does), no model.
    from recognition.livestream import FrameSpool

    spool, pixels = FrameSpool(), []
    start = time.perf_counter()
    for _, image in sample_frames(paths["video"], args.fps):
        pixels.append(rec.preprocess(image))
        spool.add(image)
    decode_s = time.perf_counter() - start
    spool.close()
    # 2. the model on those frames (frames already decoded): encoder, window pooling, scores.
    from recognition.livestream import _encode_shop, _WindowScorer
    from recognition.shop import load_shop

    shop = load_shop(paths["shop"])
    start = time.perf_counter()
    feats, _ = _encode_shop(rec, shop, args.batch_size, with_tokens=False)
    shop_s = time.perf_counter() - start
    scorer = _WindowScorer(rec, torch.from_numpy(feats), 4, 1, None, None)
    start = time.perf_counter()
    for a in range(0, len(pixels), args.batch_size):
        _, raw, _ = rec.encode_pixels(torch.stack(pixels[a:a + args.batch_size]))
        scorer.add(raw.cpu(), None)
    scorer.finish()
    model_s = time.perf_counter() - start
    hour = 60 / args.minutes
    result = {"minutes_measured": args.minutes, "sampled_frames": len(pixels), "precision": rec.precision,
              "model": args.model_config, "decode_s_per_hour": round(decode_s * hour, 1),
              "model_s_per_hour": round(model_s * hour, 1), "shop_s": round(shop_s, 2),
              "total_s_per_hour": round((decode_s + model_s) * hour, 1),
              "realtime_factor": round(3600 / ((decode_s + model_s) * hour), 1)}
    print(f"one hour at {args.fps:g} fps, extrapolated from {args.minutes:g} min: decode+preprocess "
          f"{result['decode_s_per_hour']} s, model {result['model_s_per_hour']} s ({rec.precision}), "
          f"{result['realtime_factor']}x real time; shop of {len(shop.names)} encoded once in {shop_s:.1f} s")

    # 3. peak RSS of a whole pass per video length, each in its own process.
    for minutes in args.rss_minutes:
        paths = _video(workdir, minutes, args, args.products)
        cmd = [sys.executable, __file__, "--rss_child", paths["video"], paths["shop"], "--model_config",
               args.model_config, "--batch_size", str(args.batch_size), "--fps", str(args.fps)]
        if args.precision:
            cmd += ["--precision", args.precision]
        child = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        result[f"rss_mb_{minutes:g}min"] = child["rss_mb"]
        print(f"peak RSS, {minutes:g} min of video: {child['rss_mb']} MB ({child['windows']} windows)")
    if tmp is not None:
        tmp.cleanup()
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
