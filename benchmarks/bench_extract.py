"""Benchmark evaluation feature extraction and PMD re-ranking cost at ViT-B/32 size.

Random weights and random pixels (the cost does not depend on them):
  * query clips/s: `encode_videos` on [B, 10, 3, 224, 224] clips, all frames valid;
  * gallery images/s: `encode_images` on [B*10, 3, 224, 224];
  * PMD pairs/s: `score_pairs` with 50 image tokens against 10x50 video tokens,
    the cost of re-ranking (per query: rerank_topk pairs + one token pass of the clip);
    "distinct" gives every pair its own video, "per clip" scores `--per_clip` images
    against each video, as re-ranking does (the video side decoded once per clip).
each in fp32 and bf16 (autocast; fp16 too on a GPU). Data loading is not included.
From the two encoding rates it projects the encoder time of one full LPR4M
test pass (20,079 query clips of 10 frames + 66,358 gallery images, each
encoded once; no decoding, ranking or re-ranking).

    python benchmarks/bench_extract.py [--device cpu|cuda] [--batch 4] [--steps 2]
    python benchmarks/bench_extract.py --device cuda --batch 64 --steps 10 --precisions fp32 bf16 fp16

The last line holds every figure as key=value.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.config import VISION_CONFIGS  # noqa: E402
from modules.rice import RICEConfig, RICEModel  # noqa: E402

LPR4M_TEST_CLIPS, LPR4M_TEST_IMAGES = 20_079, 66_358  # the test split: query clips (10 frames each), gallery images


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="clips per batch (images: 10x as many)")
    parser.add_argument("--steps", type=int, default=2, help="timed batches per measurement")
    parser.add_argument("--pairs", type=int, default=64, help="PMD pairs per call")
    parser.add_argument("--per_clip", type=int, default=5,
                        help="pairs per video in the re-ranking figure (5: the --rerank_topk default)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32", "bf16"],
                        help="autocast precisions (fp16: GPU only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and "fp16" in args.precisions:
        parser.error("fp16 needs --device cuda")
    config = RICEConfig(VISION_CONFIGS["ViT-B/32"], sim_header="cross_attention")
    model = RICEModel(config).to(device).eval()
    size, frames_per_clip, tokens = config.vision.image_size, 10, config.vision.num_tokens
    clips = torch.randn(args.batch, frames_per_clip, 3, size, size, device=device)
    mask = torch.ones(args.batch, frames_per_clip, dtype=torch.bool, device=device)
    images = clips.flatten(0, 1)
    width = config.vision.embed_dim
    image_tokens = torch.randn(args.pairs, tokens, width, device=device)
    video_tokens = torch.randn(args.pairs, frames_per_clip * tokens, width, device=device)
    video_mask = torch.ones(args.pairs, frames_per_clip * tokens, dtype=torch.bool, device=device)
    clip_of_pair = torch.arange(args.pairs, device=device) // args.per_clip  # re-ranking: topk pairs per clip
    clip_videos = clip_of_pair.max().item() + 1

    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} clips x {frames_per_clip} frames")
    figures = {"device": device.type}
    for precision in args.precisions:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
        with autocast:
            clip_s = timed(lambda: model.encode_videos(clips, mask), args.steps, device)
            image_s = timed(lambda: model.encode_images(images), args.steps, device)
            pair_s = timed(lambda: model.score_pairs(image_tokens, video_tokens, video_mask), args.steps, device)
            rerank_s = timed(lambda: model.score_pairs(image_tokens, video_tokens[:clip_videos],
                                                       video_mask[:clip_videos], clip_of_pair), args.steps, device)
        print(
            f"{precision}: {args.batch / clip_s:8.2f} clips/s  {len(images) / image_s:8.1f} gallery images/s  "
            f"{args.pairs / pair_s:8.1f} PMD pairs/s (distinct videos)  "
            f"{args.pairs / rerank_s:8.1f} PMD pairs/s ({args.per_clip} per clip)"
        )
        test_pass_s = LPR4M_TEST_CLIPS * clip_s / args.batch + LPR4M_TEST_IMAGES * image_s / len(images)
        print(f"{precision}: a full LPR4M test pass ({LPR4M_TEST_CLIPS} clips x {frames_per_clip} frames + "
              f"{LPR4M_TEST_IMAGES} images) would take {test_pass_s / 60:.1f} min of encoding")
        figures.update({f"{precision}_clips_per_s": f"{args.batch / clip_s:.2f}",
                        f"{precision}_images_per_s": f"{len(images) / image_s:.1f}",
                        f"{precision}_pmd_pairs_per_s": f"{args.pairs / rerank_s:.1f}",
                        f"{precision}_lpr4m_test_pass_min": f"{test_pass_s / 60:.1f}"})
    print(" ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
