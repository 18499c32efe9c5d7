"""Benchmark our CLIP image encoder against timm's ViT-B/32 CLIP tower.

Times inference (no grad) and a training step (forward + backward) for
`modules.clip_vit.VisionTransformer` and `timm`'s `vit_base_patch32_clip_224`
(random weights, 512-d head so both produce the same output), in fp32 and in
bf16 autocast, in the same process. Runs of the two models are interleaved
and the median per model is reported, so a busy machine disturbs both alike.

    python benchmarks/bench_encoder.py                    # CPU, batch 32 / 16
    python benchmarks/bench_encoder.py --device cuda --batch_size 256

Prints images/s per (mode, precision) and the ratio ours / timm. Not a test.
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
from modules.config import VISION_CONFIGS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch_size", type=int, default=32, help="inference batch size")
    parser.add_argument("--train_batch_size", type=int, default=16, help="training-step batch size")
    parser.add_argument("--iters", type=int, default=4, help="timed iterations per model and setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model and setting")
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
        help="autocast precisions to time (fp16 needs a GPU)",
    )
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    return parser.parse_args(argv)


def build_models(device: torch.device) -> dict[str, torch.nn.Module]:
    import timm  # test/benchmark-only dependency

    ours = VisionTransformer(VISION_CONFIGS["ViT-B/32"])
    reference = timm.create_model("vit_base_patch32_clip_224", pretrained=False, num_classes=512)
    return {"ours": ours.to(device), "timm": reference.to(device)}


def make_step(model: torch.nn.Module, images: torch.Tensor, mode: str, precision: str):
    """Return a closure running one timed step of `model` on `images`."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
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
    torch.manual_seed(0)
    models = build_models(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = {}
    for mode in args.modes:
        batch = args.batch_size if mode == "inference" else args.train_batch_size
        images = torch.randn(batch, 3, 224, 224, device=device)
        for precision in args.precisions:
            for model in models.values():
                model.train(mode == "train")
            steps = {name: make_step(m, images, mode, precision) for name, m in models.items()}
            for _ in range(args.warmup):
                for step in steps.values():
                    step()
            times = {name: [] for name in steps}
            for _ in range(args.iters):  # interleaved: noise hits both models alike
                for name, step in steps.items():
                    times[name].append(time_step(step, device))
            speed = {name: batch / statistics.median(t) for name, t in times.items()}
            results[(mode, precision)] = speed
            print(
                f"{mode:9s} {precision:4s} batch {batch:3d}: ours {speed['ours']:8.2f} img/s, "
                f"timm {speed['timm']:8.2f} img/s, ratio {speed['ours'] / speed['timm']:.2f}",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
