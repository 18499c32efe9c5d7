"""Where the encoder's training step spends its time, and how fast it could be at most.

    python benchmarks/bench_breakdown.py                                  # ViT-B/32, batch 16, fp32 and bf16
    python benchmarks/bench_breakdown.py --device cuda --batch 128 --precisions fp32 tf32 bf16
    python benchmarks/bench_breakdown.py --model tiny --batch 4 --steps 1 # quick check that it runs

Profiles `--steps` training steps (forward and backward, after one warm-up)
of our image encoder with torch.profiler and splits the step into its matrix
products (aten::mm, addmm, bmm, baddbmm: the linear layers, the patch
embedding, batched products) and everything else (attention kernels,
LayerNorm, activations, copies). It also times a large square matrix product
in the same precision: the device's practical matmul peak. Printed per
precision:

- `matmul_share`: the matrix products' share of the step's operator time;
- `matmul_tflops` / `peak_tflops`: the rate the step's products reach
  (FLOPs counted by the profiler) against that peak;
- `ceiling`: 1 / matmul_share, the speed-up if everything but the products
  took no time at all. A faster encoder at the same precision cannot beat it
  (unless its products run closer to the peak); any other implementation of
  the same model (e.g. timm's) runs the same products.

Not a test. The figures are on the last line (key=value).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.clip_vit import VisionTransformer  # noqa: E402
from modules.config import VISION_CONFIGS  # noqa: E402
from utils.runtime.precision import set_tf32  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B/32", choices=sorted(VISION_CONFIGS), help="encoder configuration")
    p.add_argument("--batch", type=int, default=16, help="images per training step")
    p.add_argument("--steps", type=int, default=3, help="profiled steps after one warm-up")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES),
                   help="autocast precisions (tf32 and fp16 need a GPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        p.error("--batch and --steps must be >= 1")
    if args.device == "cpu" and {"tf32", "fp16"} & set(args.precisions):
        p.error("tf32 and fp16 need --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Rate of a size³ matrix product in `dtype` (the best of `repeats`), in TFLOP/s."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def breakdown(model: torch.nn.Module, images: torch.Tensor, precision: str, steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    device = images.device
    dtype = DTYPES[precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            emb, _ = model(images)
            emb.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernel selection
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, with_flops=True) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # Operator time: aten ops only (the autograd and profiler wrappers around them would count twice).
    total = sum(getattr(e, attr) for e in events if e.key.startswith("aten::"))
    matmul = sum(getattr(e, attr) for e in events if e.key in MATMUL_OPS)
    flops = sum(e.flops for e in events if e.key in MATMUL_OPS)
    return {"matmul_share": matmul / total, "matmul_s": matmul / 1e6 / steps, "step_s": total / 1e6 / steps,
            "matmul_gflop": flops / 1e9 / steps,
            "matmul_tflops": flops / (matmul / 1e6) / 1e12 if matmul else float("nan")}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = VisionTransformer(VISION_CONFIGS[args.model]).to(device).train()
    size = VISION_CONFIGS[args.model].image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    print(f"{args.model} encoder, training step (forward and backward) of {args.batch} images, device {device.type}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; operator time from torch.profiler")
    results, figures = {}, {}
    for precision in args.precisions:
        set_tf32(precision == "tf32", device)
        r = breakdown(model, images, precision, args.steps)
        r["peak_tflops"] = matmul_peak_tflops(device, DTYPES[precision] or torch.float32)
        r["ceiling"] = 1 / r["matmul_share"]
        results[precision] = r
        print(f"{precision:4s}: step {r['step_s']:.3f} s, matrix products {r['matmul_s']:.3f} s "
              f"({100 * r['matmul_share']:.1f} %) at {r['matmul_tflops']:.3f} TFLOP/s, "
              f"{100 * r['matmul_tflops'] / r['peak_tflops']:.0f} % of this device's {r['peak_tflops']:.3f} "
              f"(2048^3 product); with everything else free: at most {r['ceiling']:.2f}x faster", flush=True)
        figures.update({f"{precision}_{k}": f"{v:.4g}" for k, v in r.items()})
    set_tf32(False, device)
    print(" ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return results


if __name__ == "__main__":
    main()
