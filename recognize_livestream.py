"""Which product is presented when: a whole livestream video against a shop folder (docs/livestream.md).

    python recognize_livestream.py --video live.mp4 --shop shop_dir/ --ckpt model.pt --output_dir out/

Decodes the video in one streaming pass at --fps, embeds sliding windows of
frames with the checkpoint's encoder and video pooling, scores every window
against every shop image (optionally re-ranking each window's top K with
PMD), smooths the scores over time (Viterbi with a switching cost and a
"no product" state) and writes timeline.json, timeline.csv, report.html and
timeline.png. Bad input ends with one line `error: ...` and exit code 2;
corrupt packets, non-image and duplicate shop files are skipped and counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from utils.errors import ConfigError, one_line_errors
from utils.options import HelpFormatter, add_fast_decode, check_writable, resolve_decode
from utils.runtime.precision import PRECISIONS

# Defaults measured on the synthetic livestream with the demo's ICL model (docs/livestream.md).
WINDOW, STRIDE, THRESHOLD, SWITCH_COST = 4, 1, 0.7, 0.3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recognize_livestream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--video", required=True, help="the livestream recording (mp4, mkv, webm, ...: anything PyAV reads)")
    io.add_argument("--shop", required=True, help="folder of product images, one per product (the file name "
                    "without suffix is its id); non-images and byte-identical duplicates are skipped")
    io.add_argument("--ckpt", "--ckpt_path", dest="ckpt", required=True,
                    help="checkpoint: OpenAI CLIP .pt, RICE v1 pytorch_model.bin.*, RICE v2 rice_final.pth, or one "
                    "written by lpr4m_train.py")
    io.add_argument("--output_dir", default="outputs/livestream",
                    help="where timeline.json/.csv, report.html and timeline.png go")
    add_fast_decode(io)
    tl = p.add_argument_group("timeline")
    tl.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    tl.add_argument("--window", type=int, default=WINDOW, help="sampled frames per window, pooled as one clip (4 at 1 fps: a 4-s clip)")
    tl.add_argument("--stride", type=int, default=STRIDE, help="sampled frames between window starts (<= --window)")
    tl.add_argument("--threshold", type=float, default=THRESHOLD,
                    help="'no product' where no product's window cosine beats this; a cosine, so it depends on the model "
                    "(chosen for the demo model: docs/livestream.md; tune with tools/sweep_timeline.py)")
    tl.add_argument("--switch_cost", type=float, default=SWITCH_COST,
                    help="smoothing: the score a change of product (or to 'no product') must gain; 0: every window "
                    "on its own")
    tl.add_argument("--rerank", action="store_true", help="re-order each window's top --rerank_topk products with "
                    "PMD (needs a checkpoint with a PMD head)")
    tl.add_argument("--rerank_topk", type=int, default=5, help="with --rerank: candidates per window")
    run = p.add_argument_group("devices and speed")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)")
    run.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                     help="auto: bf16 on GPUs and CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere")
    run.add_argument("--batch_size", type=int, default=32, help="frames per encoder batch")
    run.add_argument("--no_progress", action="store_true", help="no progress bar and no log lines (notes and the "
                     "summary stay)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_decode(parser, args)
    for name in ("window", "stride", "batch_size", "rerank_topk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.fps > 0:
        parser.error(f"--fps must be > 0, got {args.fps}")
    if args.stride > args.window:
        parser.error(f"--stride {args.stride} > --window {args.window} would leave frames out of every window")
    if args.switch_cost < 0:
        parser.error(f"--switch_cost must be >= 0, got {args.switch_cost}")
    return args


def run(args: argparse.Namespace) -> dict:
    from recognition.shop import load_shop
    from recognition.video import open_video

    # Input checks before the model loads: a bad file fails in a second.
    container, _ = open_video(args.video)
    container.close()
    shop = load_shop(args.shop)
    out = Path(args.output_dir)
    check_writable(out)

    import numpy as np

    from recognition.api import Recognizer
    from recognition.livestream import score_livestream
    from recognition.report import write_html, write_json_csv, write_png
    from recognition.timeline import build_timeline

    start = time.perf_counter()
    rec = Recognizer.load(args.ckpt, device=args.device, precision=None if args.precision == "auto" else args.precision,
                          decode=args.decode)
    log = print if not args.no_progress else (lambda *a, **k: None)
    for note in shop.notes():
        print(f"note: --shop {args.shop}: {note}", file=sys.stderr)
    log(f"{rec.config.vision.image_size}px encoder, {rec.config.preprocessing} preprocessing, "
        f"{rec.config.video_pooling} pooling, {rec.precision} on {rec.device}; {len(shop.names)} products")
    done = score_livestream(rec, args.video, shop, fps=args.fps, window=args.window, stride=args.stride,
                            batch_size=args.batch_size, rerank_topk=args.rerank_topk if args.rerank else None,
                            progress=not args.no_progress, keep_frames=True)
    for note in done.decode.notes():
        print(f"note: --video {args.video}: {note}", file=sys.stderr)
    segments = build_timeline(done.windows, args.threshold, args.switch_cost)
    info = {"video": str(args.video), "shop_folder": str(args.shop), "checkpoint": str(args.ckpt),
            "duration_s": round(max(done.decode.duration_s, done.windows.slots()[1][-1]), 3),
            "fps": args.fps, "window": args.window, "stride": args.stride, "threshold": args.threshold,
            "switch_cost": args.switch_cost, "rerank_topk": args.rerank_topk if args.rerank else None,
            "precision": rec.precision, "windows": len(done.windows.starts),
            "decode": done.decode.to_dict(), "shop": shop.to_dict()}
    write_json_csv(out, info, segments)
    times = done.windows.frame_times
    frames = {s["frame_s"]: done.frames.get(int(np.argmin(np.abs(times - s["frame_s"])))) for s in segments}
    done.frames.close()
    write_html(out, info, segments, dict(zip(shop.names, shop.paths)), frames)
    write_png(out, done.windows, segments, args.threshold)
    products = sum(1 for s in segments if s["image_id"])
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in done.seconds.items())
    print(f"{len(segments)} segments ({products} with a product) over {info['duration_s']:.0f} s of video "
          f"in {time.perf_counter() - start:.1f} s ({seconds}); {out / 'timeline.json'}, {out / 'report.html'}")
    return {**info, "segments": segments}


def main(argv: list[str] | None = None) -> dict:
    with one_line_errors():
        args = parse_args(argv)
        given = argv if argv is not None else sys.argv[1:]
        if not args.rerank and any(a.startswith("--rerank_topk") for a in given):
            raise ConfigError("--rerank_topk has an effect only with --rerank; add --rerank or drop it")
        return run(args)


if __name__ == "__main__":
    main()
