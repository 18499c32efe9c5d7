"""Time and peak memory of one full RICE training step, as the trainer runs it.

    python benchmarks/bench_train.py                                  # every default configuration
    python benchmarks/bench_train.py --device cpu --configs fp32 fp32+ckpt --steps 2
    python benchmarks/bench_train.py --device cuda --configs fp32 bf16 bf16+ckpt --steps 10
    python benchmarks/bench_train.py --configs fp32 fp32+shared --vs_encoder --steps 10
    python benchmarks/bench_train.py --model tiny --steps 1           # quick check that it runs

What is measured: `utils.train.engine.train_step` (the trainer's step) on an
ICL+PMD+PFR model (`RICEModel(RICEConfig(vision=VISION_CONFIGS[--model],
sim_header="cross_attention", recons_feat=True))`) with random weights and
random data: zero_grad, forward through `RICEModel.forward` under the
precision's autocast, backward through `utils.runtime.precision.Precision` (loss
scaling for fp16), gradient-norm clipping at 1.0 and an AdamW step from
`utils.train.optim.build_optimizer` (the trainer's default lr 3e-4, coef_lr 1e-3,
weight decay 0.2, four parameter groups). A batch is `--batch` pairs, each one
product image and `--frames` video frames (all valid) at the encoder's input
size (224 px for ViT-B/32), collated as the loader does ({"image", "frames",
"frame_mask"}, on the host; `train_step` moves it to the device).

A configuration is a precision (fp32, bf16, fp16 -- fp16 on CUDA only),
optionally with `+ckpt` for gradient checkpointing (encoder blocks and PMD
chunks recomputed in the backward pass), `+accN` for gradient
accumulation over N micro-batches (the exact gradient cache of
`--gradient_accumulation_steps`: less encoder activation memory, a second
encoder forward) and/or `+shared` for `--pmd_shared_dropout` (the PMD query
dropout drawn once per image, so its self blocks run once per image, not per
pair).

`--vs_encoder` adds, per configuration, the time of the encoder alone on the
step's images (forward and backward with every token's output, alternating
with the step in the same process) and two ratios to it: the model's forward
and backward (ICL, PMD, PFR; no clipping, no optimizer) and the whole step.
They say how much the heads and losses, then the fixed per-step costs
(clipping, AdamW over every parameter), add to the encoder's unavoidable
cost. Each one runs in its own
subprocess: `--warmup` untimed steps (the first allocates the optimizer state;
on a CPU the next one or two are still slower while the allocator settles),
then `--steps` timed steps. Printed per configuration: seconds per step (mean
of the timed steps), pairs per second, peak memory, torch threads and the loss of the last
step. Peak memory is `torch.cuda.max_memory_allocated` on CUDA, and on CPU
the process's peak resident set (VmHWM in /proc/self/status), which includes
the interpreter, torch and the model, over the whole run.

The default configurations are fp32 and fp32+ckpt, plus bf16 and bf16+ckpt
where the hardware has native half precision (a GPU, or a CPU with
AVX512-BF16 or AMX): elsewhere bf16 matmuls are emulated and a ViT-B/32
step takes many minutes. Timings on a shared machine are noisy. Not a test.

For a comparison with the authors' v1 code, run benchmarks/bench_vs_authors.py:
it times the same step of both models in one process, alternating, so that both
figures come from the same machine at the same time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.config import VISION_CONFIGS  # noqa: E402
from modules.rice import RICEConfig, RICEModel, to_device, valid_frames  # noqa: E402
from utils.runtime.precision import Precision  # noqa: E402
from utils.train.engine import train_step  # noqa: E402
from utils.train.optim import build_optimizer  # noqa: E402

# The trainer's defaults (utils/train/params.py).
LR, COEF_LR, WEIGHT_DECAY, CLIP_GRAD_NORM = 3e-4, 1e-3, 0.2, 1.0


def _options(name: str) -> tuple[str, bool, int, bool]:
    """(precision, gradient checkpointing, accumulation steps, shared PMD dropout) of a configuration name.

    A name is a precision, then optionally `+ckpt`, `+accN` and/or `+shared`; anything else is a usage error.
    """
    precision, *options = name.split("+")
    valid = all(o in ("ckpt", "shared") or (o.startswith("acc") and o[3:].isdigit() and int(o[3:]) >= 1)
                for o in options)
    if precision not in ("fp32", "bf16", "fp16") or not valid or len(set(options)) != len(options):
        raise argparse.ArgumentTypeError(f"{name!r}: expected fp32, bf16 or fp16, optionally with +ckpt, "
                                         "+accN (N micro-batches) and/or +shared (--pmd_shared_dropout)")
    accumulation = next((int(o[3:]) for o in options if o.startswith("acc")), 1)
    return precision, "ckpt" in options, accumulation, "shared" in options


def config(text: str) -> str:
    """argparse type: a valid configuration name, kept as text."""
    _options(text)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B/32", choices=sorted(VISION_CONFIGS), help="encoder configuration")
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--frames", type=int, default=10, help="frames per video")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", nargs="+", type=config, default=None,
                   help="precision[+ckpt][+accN][+shared] to run, e.g. fp32 fp32+ckpt fp32+acc4 fp32+shared "
                        "bf16 bf16+ckpt (default: fp32, fp32+ckpt, and bf16, bf16+ckpt where half precision "
                        "is native)")
    p.add_argument("--vs_encoder", action="store_true",
                   help="also time the encoder alone on the step's images (forward and backward, tokens "
                        "included), alternating with the step, and print the step's cost over it")
    p.add_argument("--one", type=config, default=None, help=argparse.SUPPRESS)  # child process: one configuration
    args = p.parse_args(argv)
    if args.batch < 1 or args.frames < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--batch, --frames, --warmup and --steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.device == "cpu" and any(c.startswith("fp16") for c in args.configs or [args.one or ""]):
        p.error("fp16 needs --device cuda")
    return args


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); plain AVX-512 or AVX2 emulates bf16."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def default_configs(device: str) -> list[str]:
    native_half = device == "cuda" or native_bf16_cpu()
    precisions = ["fp32", "bf16"] if native_half else ["fp32"]
    return [c for p in precisions for c in (p, f"{p}+ckpt")]


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def random_batch(vision, batch: int, frames: int, device: torch.device) -> dict[str, torch.Tensor]:
    size = vision.image_size
    data = {
        "image": torch.randn(batch, 3, size, size),
        "frames": torch.randn(batch, frames, 3, size, size),
        "frame_mask": torch.ones(batch, frames, dtype=torch.bool),
    }
    if device.type == "cuda":  # the trainer's loader pins host memory on CUDA
        data = {k: v.pin_memory() for k, v in data.items()}
    return data


def run_one(args: argparse.Namespace, name: str) -> None:
    """Build the model, run `args.warmup` untimed + `args.steps` timed steps, print one table row."""
    precision_name, ckpt, accumulation, shared = _options(name)
    if args.batch % accumulation:
        raise SystemExit(f"{name}: --batch {args.batch} is not divisible into {accumulation} micro-batches")
    device = torch.device(args.device)
    torch.manual_seed(0)
    vision = VISION_CONFIGS[args.model]
    model = RICEModel(RICEConfig(vision=vision, sim_header="cross_attention", recons_feat=True)).to(device)
    model.set_grad_checkpointing(ckpt)
    model.set_pmd_shared_dropout(shared)
    model.train()
    optimizer = build_optimizer(model, LR, COEF_LR, WEIGHT_DECAY)
    precision = Precision(precision_name, device)
    batch = random_batch(vision, args.batch, args.frames, device)

    def step() -> dict[str, torch.Tensor]:
        losses = train_step(model, batch, optimizer, precision, accumulation=accumulation,
                            clip_grad_norm=CLIP_GRAD_NORM, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return losses

    # The encoder alone on the same images: what the step cannot be cheaper than; and the model's
    # forward and backward without clipping and the optimizer (fixed costs, whatever the batch).
    images = torch.cat([batch["image"], batch["frames"].flatten(0, 1)]).to(device)
    frames, host_mask = batch["frames"].to(device), batch["frame_mask"]
    mask, index = to_device(host_mask, device), to_device(valid_frames(host_mask), device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def encoder_step() -> None:
        with precision.autocast():
            emb, tokens = model.visual(images, return_tokens=True)
            loss = emb.float().square().mean() + tokens.float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize()

    def model_step() -> None:
        with precision.autocast():
            loss = model(images[: args.batch], frames, mask, index)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize()

    references = {}  # timed after each step, in this order
    if args.vs_encoder:
        if accumulation == 1:  # with +acc the step's model pass is the gradient cache, not one forward
            references["model"] = model_step
        references["encoder"] = encoder_step
    for _ in range(args.warmup):  # allocates the optimizer state, autotunes kernels, settles the allocator
        step()
        for reference in references.values():
            reference()
    times, reference_times = [], {kind: [] for kind in references}
    for _ in range(args.steps):  # with --vs_encoder alternating, so the machine's drift hits all alike
        start = time.perf_counter()
        losses = step()
        times.append(time.perf_counter() - start)
        for kind, reference in references.items():
            start = time.perf_counter()
            reference()
            reference_times[kind].append(time.perf_counter() - start)
    per_step = sum(times) / len(times)
    row = (f"{name:<14s} {per_step:9.2f} {args.batch / per_step:9.2f} {peak_memory_gib(device):14.2f} "
           f"{torch.get_num_threads():7d} {losses['loss'].item():8.3f}")
    if args.vs_encoder:
        # Medians: one slow step (a page fault storm, a neighbour) should not move the ratios.
        encoder_median = statistics.median(reference_times["encoder"])
        model_ratio = (f"{statistics.median(reference_times['model']) / encoder_median:9.3f}"
                       if "model" in references else f"{'-':>9s}")
        row += f" {encoder_median:9.2f} {model_ratio} {statistics.median(times) / encoder_median:8.3f}"
    print(row, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        run_one(args, args.one)
        return 0
    configs = args.configs or default_configs(args.device)
    size = VISION_CONFIGS[args.model].image_size
    peak_kind = "CUDA max allocated" if args.device == "cuda" else "process peak RSS (VmHWM)"
    print(f"{args.model}, ICL+PMD+PFR, {args.batch} pairs x {args.frames} frames at {size} px, "
          f"device {args.device}, AdamW (lr {LR:g}, coef_lr {COEF_LR:g}, wd {WEIGHT_DECAY:g}), "
          f"clip {CLIP_GRAD_NORM:g}; {args.warmup} warm-up + {args.steps} timed steps; peak = {peak_kind}")
    header = f"{'config':<14s} {'s/step':>9s} {'pairs/s':>9s} {'peak mem (GiB)':>14s} {'threads':>7s} {'loss':>8s}"
    if args.vs_encoder:
        n_images = args.batch * (1 + args.frames)
        print(f"encoder = the encoder alone, forward and backward of the step's {n_images} images (median s); "
              "model/enc = the model's forward and backward (no clipping, no optimizer; not with +acc) over it; "
              "step/enc = the whole step over it")
        header += f" {'encoder':>9s} {'model/enc':>9s} {'step/enc':>8s}"
    print(header, flush=True)
    base = ["--model", args.model, "--batch", str(args.batch), "--frames", str(args.frames),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--device", args.device]
    if args.vs_encoder:
        base.append("--vs_encoder")
    failed = 0
    for name in configs:
        # Each configuration in a fresh process, so the peak-memory figures are separate.
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", name, *base],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode == 0:
            print(proc.stdout.strip(), flush=True)
        else:
            failed += 1
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no error output)"]
            print(f"{name:<14s} FAILED (exit {proc.returncode}): {tail[0]}", flush=True)
            print(proc.stderr[-2000:], file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
