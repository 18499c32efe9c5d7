"""Time and peak memory of one RICE (ICL+PMD+PFR) training step with AdamW.

Usage (from the repository root):
    python -m benchmarks.bench_train_step                  # fp32 and bf16, with and without grad checkpointing
    python -m benchmarks.bench_train_step --precision bf16 --grad-checkpointing --steps 3

Default: ViT-B/32 at 224 px, 4 pairs × 10 frames (all frames valid), random
weights and data. On CUDA peak memory is `torch.cuda.max_memory_allocated`;
on CPU it is the process's peak resident set (VmHWM from /proc/self/status),
which includes the Python interpreter and torch itself, so each configuration
runs in its own subprocess. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from modules.clip_vit import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B/32", choices=sorted(VISION_CONFIGS))
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--frames", type=int, default=10, help="frames per video")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="one configuration (default: run all)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    vision = VISION_CONFIGS[args.model]
    model = RICEModel(RICEConfig(vision=vision, sim_header="cross_attention", recons_feat=True)).to(device)
    model.set_grad_checkpointing(args.grad_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2)
    size = vision.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    frames = torch.randn(args.batch, args.frames, 3, size, size, device=device)
    frame_mask = torch.ones(args.batch, args.frames, dtype=torch.bool, device=device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            losses = model(images, frames, frame_mask)
        losses["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return losses["loss"].item()

    step()  # warm-up (allocates optimizer state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    per_step = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mib()
    kind = "peak CUDA allocated" if device.type == "cuda" else "peak RSS"
    print(f"{args.model} {args.batch}x{args.frames} {args.precision:4s} grad_ckpt={args.grad_checkpointing!s:5s} "
          f"device={device.type} threads={torch.get_num_threads()}: {per_step:.2f} s/step, "
          f"{kind} {peak:.0f} MiB (loss {loss:.3f})", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.precision is not None:
        run_one(args)
        return
    # Each configuration in a fresh process so the peak-memory figures are separate.
    base = ["--model", args.model, "--batch", str(args.batch), "--frames", str(args.frames),
            "--steps", str(args.steps), "--device", args.device]
    for precision in ("fp32", "bf16"):
        for ckpt in ([], ["--grad-checkpointing"]):
            cmd = [sys.executable, "-m", "benchmarks.bench_train_step", "--precision", precision, *base, *ckpt]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
