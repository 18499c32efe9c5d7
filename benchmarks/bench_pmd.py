"""Time of the PMD part of one training step: the decoder's forward and backward with PFR, no encoder.

    python benchmarks/bench_pmd.py                                   # ViT-B/32 shapes, 32 pairs x 10 frames
    python benchmarks/bench_pmd.py --device cuda --precision bf16 --batch 64
    python benchmarks/bench_pmd.py --pmd_chunk_size 16               # compare chunk sizes
    python benchmarks/bench_pmd.py --shared_dropout                  # self blocks once per image
    python benchmarks/bench_pmd.py --model tiny --steps 1            # quick check that it runs

What is measured: `RICEModel.pair_losses` of an ICL+PMD+PFR model and its
backward pass, on random features of the encoder's output shapes (per pair:
one image's N tokens, the N tokens of each of `--frames` frames, all valid),
made leaves that require grad as in the gradient cache. That is the step
minus the encoder: ICL, hard-negative mining, the PMD pairs (1 + 3 per
image) in chunks of `--pmd_chunk_size`, PFR on the positives. The model is
in training mode: the PMD query dropout is drawn per pair (v1), or once per
image with `--shared_dropout` (`--pmd_shared_dropout` of training). One
process; under torchrun the decoder's video side would cover the gathered
batch.

Before and after: the script uses only `RICEModel.pair_losses` and
`RICEConfig(pmd_chunk_size=...)`, so it also measures an older checkout's
code (`--checkout OLD`). Without `--pmd_chunk_size` each checkout uses its
own default. Timings on a shared
machine are noisy. Not a test. The figures are on the last line (key=value).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("ViT-B/16", "ViT-B/32", "small", "tiny")  # modules/config.py VISION_CONFIGS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B/32", choices=MODELS, help="encoder shapes")
    p.add_argument("--batch", type=int, default=32, help="pairs per step (one process)")
    p.add_argument("--frames", type=int, default=10, help="frames per video")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast of the decoder")
    p.add_argument("--pmd_chunk_size", type=int, default=None, help="pairs per decoder chunk (default: the model's)")
    p.add_argument("--shared_dropout", action="store_true", help="query dropout once per image (not per pair)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkout", type=Path, default=ROOT,
                   help="the project checkout whose code is measured (default: this file's)")
    args = p.parse_args(argv)
    if min(args.batch, args.frames, args.warmup, args.steps) < 1 or (args.pmd_chunk_size or 1) < 1:
        p.error("--batch, --frames, --warmup, --steps and --pmd_chunk_size must be >= 1")
    if args.batch < 2:
        p.error("--batch must be >= 2: PMD needs negatives")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(args.checkout.resolve()))
    from modules.config import VISION_CONFIGS
    from modules.rice import RICEConfig, RICEModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    vision = VISION_CONFIGS[args.model]
    chunk = {} if args.pmd_chunk_size is None else {"pmd_chunk_size": args.pmd_chunk_size}
    model = RICEModel(RICEConfig(vision=vision, sim_header="cross_attention", recons_feat=True, **chunk))
    model.to(device).train()
    if args.shared_dropout:
        if not hasattr(model, "set_pmd_shared_dropout"):
            raise SystemExit("--shared_dropout: this checkout's RICEModel has no set_pmd_shared_dropout")
        model.set_pmd_shared_dropout(True)
    b, n, e = args.batch, vision.num_tokens, vision.embed_dim
    g = torch.Generator().manual_seed(1)
    host = {
        "image_emb": F.normalize(torch.randn(b, e, generator=g), dim=-1),
        "video_emb": F.normalize(torch.randn(b, e, generator=g), dim=-1),
        "image_tokens": torch.randn(b, n, e, generator=g),
        "video_tokens": torch.randn(b, args.frames * n, e, generator=g),
    }
    features = {k: v.to(device).requires_grad_() for k, v in host.items()}
    features["token_mask"] = torch.ones(b, args.frames * n, dtype=torch.bool, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        for v in features.values():
            v.grad = None
        with autocast:
            losses = model.pair_losses(features)
        losses["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return losses["loss"]

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    seconds = (time.perf_counter() - start) / args.steps
    resolved = model.config.pmd_chunk_size or model.pmd_chunk_size(device)  # older checkouts: an int in the config
    pairs = b * (1 + min(model.config.num_hard_negatives, b - 1))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(f"model={args.model.replace('/', '-')} device={args.device} precision={args.precision} batch={b} "
          f"frames={args.frames} pairs={pairs} chunk={resolved} shared_dropout={int(args.shared_dropout)} "
          f"pmd_ms_per_step={1000 * seconds:.2f} "
          f"pmd_pairs_per_s={pairs / seconds:.1f} peak_gib={peak:.2f} loss={loss.item():.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
