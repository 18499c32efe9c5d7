"""Benchmark our CLIP image encoder against timm's ViT-B/32 CLIP tower, eager and compiled.

Times inference (no grad) and a training step (forward + backward) for
`modules.clip_vit.VisionTransformer` and `timm`'s `vit_base_patch32_clip_224`
(random weights, 512-d head so both produce the same output), in fp32 and in
bf16 autocast (on a GPU also `tf32`: fp32 with TF32 matmuls, and fp16), in the
same process. With `--compile` a third model joins: ours under `torch.compile`
(what `lpr4m_train.py --compile` does to the encoder), and with
`--compile_timm` timm's compiled too. Runs of the models are interleaved and
the median per model is reported, so a busy machine disturbs all alike. The
warm-up iterations include the compilation (the first call of each mode and
precision): not in the speed, but reported as `..._first_call_s`.

    python benchmarks/bench_encoder.py                    # CPU, batch 32 / 16
    python benchmarks/bench_encoder.py --compile --precisions fp32 bf16
    python benchmarks/bench_encoder.py --device cuda --batch_size 256 --train_batch_size 128 \
        --precisions fp32 tf32 bf16 fp16 --compile

Prints images/s per (mode, precision) and the ratios to timm's eager speed;
the last line holds every figure as key=value. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.clip_vit import VisionTransformer  # noqa: E402
from modules.config import VISION_CONFIGS  # noqa: E402
from utils.runtime.precision import set_tf32  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch_size", type=int, default=32, help="inference batch size")
    parser.add_argument("--train_batch_size", type=int, default=16, help="training-step batch size")
    parser.add_argument("--iters", type=int, default=4, help="timed iterations per model and setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model and setting")
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "tf32", "bf16", "fp16"],
        help="autocast precisions to time (tf32 and fp16 need a GPU; fp32 there means exact fp32 matmuls)",
    )
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument("--compile", action="store_true", help="also time our encoder under torch.compile")
    parser.add_argument("--compile_timm", action="store_true", help="also time timm's model under torch.compile")
    parser.add_argument("--compile_mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.iters < 1:
        parser.error("--warmup and --iters must be >= 1 (the first warm-up call is the compilation)")
    if args.device == "cpu" and {"tf32", "fp16"} & set(args.precisions):
        parser.error("tf32 and fp16 need --device cuda")
    return args


def build_models(device: torch.device, compile_ours: bool, compile_timm: bool,
                 mode: str) -> dict[str, torch.nn.Module]:
    import timm  # test/benchmark-only dependency

    def ours_model():
        torch.manual_seed(0)
        return VisionTransformer(VISION_CONFIGS["ViT-B/32"]).to(device)

    def timm_model():
        torch.manual_seed(0)
        return timm.create_model("vit_base_patch32_clip_224", pretrained=False, num_classes=512).to(device)

    models = {"ours": ours_model(), "timm": timm_model()}
    if compile_ours:
        models["ours_compiled"] = ours_model()
        models["ours_compiled"].compile(mode=mode)  # in place, as the trainer does
    if compile_timm:
        models["timm_compiled"] = timm_model()
        models["timm_compiled"].compile(mode=mode)
    return models


def make_step(model: torch.nn.Module, images: torch.Tensor, mode: str, precision: str):
    """Return a closure running one timed step of `model` on `images`."""
    dtype = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device_type = images.device.type

    def output(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out[0] if isinstance(out, tuple) else out

    def step() -> None:
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if mode == "inference":
                with torch.inference_mode():
                    output(images)
            else:
                output(images).float().square().mean().backward()
        if mode == "train":
            model.zero_grad(set_to_none=True)

    return step


def time_step(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    models = build_models(device, args.compile, args.compile_timm, args.compile_mode)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    results, figures = {}, {"device": device.type}
    for mode in args.modes:
        batch = args.batch_size if mode == "inference" else args.train_batch_size
        images = torch.randn(batch, 3, 224, 224, device=device)
        for precision in args.precisions:
            set_tf32(precision == "tf32", device)
            for model in models.values():
                model.train(mode == "train")
            steps = {name: make_step(m, images, mode, precision) for name, m in models.items()}
            first = {name: time_step(step, device) for name, step in steps.items()}  # compiles, if compiled
            for _ in range(args.warmup - 1):
                for step in steps.values():
                    step()
            times = {name: [] for name in steps}
            for _ in range(args.iters):  # interleaved: noise hits both models alike
                for name, step in steps.items():
                    times[name].append(time_step(step, device))
            speed = {name: batch / statistics.median(t) for name, t in times.items()}
            results[(mode, precision)] = speed
            print(f"{mode:9s} {precision:4s} batch {batch:3d}: "
                  + ", ".join(f"{name} {value:8.2f} img/s ({value / speed['timm']:.2f}x timm)"
                              for name, value in speed.items()), flush=True)
            for name, value in speed.items():
                figures[f"{mode}_{precision}_{name}"] = f"{value:.2f}"
                if name != "timm":
                    figures[f"{mode}_{precision}_{name}_vs_timm"] = f"{value / speed['timm']:.3f}"
                if name.endswith("_compiled"):
                    figures[f"{mode}_{precision}_{name}_first_call_s"] = f"{first[name]:.1f}"
    print(" ".join(f"{key}={value}" for key, value in figures.items()), flush=True)
    return results


if __name__ == "__main__":
    main()
