"""Run every benchmark and write their figures to one markdown file.

    python benchmarks/run_all.py [--output benchmarks/RESULTS.md] [--device cpu|cuda]

Each benchmark runs in its own process (so peak-memory figures are its own)
and its printed table is copied into the report under a heading, with the
machine it ran on. Half precision is measured only where the hardware has it
(a GPU, or a CPU with bf16 instructions: AVX512-BF16 or AMX): on other CPUs
bf16 matmuls are emulated and a ViT-B/32 training step takes many minutes. `--precisions`
overrides that choice.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_description(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (f"{cpu}, {torch.get_num_threads()} torch threads, CPU kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    if device == "cuda":
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def default_precisions(device: str) -> list[str]:
    if str(ROOT) not in sys.path:  # run as `python benchmarks/run_all.py`
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench_train import native_bf16_cpu

    native_half = device == "cuda" or native_bf16_cpu()
    return ["fp32", "bf16"] if native_half else ["fp32"]


def benchmarks(device: str, precisions: list[str]) -> list[tuple[str, list[str]]]:
    train_configs = [c for p in precisions for c in (p, f"{p}+ckpt", f"{p}+acc4")]
    return [
        ("Encoder: ViT-B/32 ours vs timm vit_base_patch32_clip_224",
         ["bench_encoder.py", "--device", device, "--precisions", *precisions]),
        ("Encoder training step: share of the matrix products, their rate against the peak",
         ["bench_breakdown.py", "--device", device, "--precisions", *precisions]),
        ("Training step: ICL+PMD+PFR, ViT-B/32, 4 pairs x 10 frames, AdamW",
         ["bench_train.py", "--device", device, "--configs", *train_configs]),
        ("Feature extraction and PMD scoring, ViT-B/32",
         ["bench_extract.py", "--device", device, "--precisions", *precisions]),
        ("PMD part of a training step (decoder forward and backward with PFR), ViT-B/32 shapes",
         ["bench_pmd.py", "--device", device]),
        ("Training loader per core, photo-like 256-px JPEGs, files and shards: before uint8 batches vs exact vs "
         "--decode tv",
         ["bench_loader.py"]),
        ("Packing into shards: 100 clips x 118 photo-like frames, 2 processes",
         ["bench_pack.py", "--clips", "100", "--frames", "118", "--workers", "2", "--samples_per_shard", "25"]),
        ("Decoding: exact (default) vs --decode draft vs --decode tv, one thread; R@K per mode",
         ["bench_decode.py", "--recall"]),
        ("Ranking at LPR4M and MovingFashion test scale (random features)",
         ["bench_ranking.py"]),
    ]


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="markdown report")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="default: fp32, plus bf16 where the hardware has native half precision")
    p.add_argument("--only", nargs="+", default=None, help="run only the benchmarks whose script names are given")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precisions = args.precisions or default_precisions(device)
    sections = [f"# Benchmarks\n\nMachine: {machine_description(device)}. "
                f"Date: {time.strftime('%Y-%m-%d')}. Precisions: {', '.join(precisions)}.\n"]
    for title, command in benchmarks(device, precisions):
        if args.only and command[0] not in args.only:
            continue
        print(f"[run_all] {title}", flush=True)
        start = time.time()
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / command[0]), *command[1:]],
                              cwd=ROOT, capture_output=True, text=True, env=None)
        body = proc.stdout.strip() if proc.returncode == 0 else f"FAILED ({proc.returncode}):\n{proc.stderr[-2000:]}"
        print(body, flush=True)
        sections.append(f"## {title}\n\n`python benchmarks/{' '.join(command)}` ({time.time() - start:.0f} s)\n\n"
                        f"```\n{body}\n```\n")
    output = Path(args.output)
    output.write_text("\n".join(sections))
    print(f"[run_all] wrote {output}")
    return output


if __name__ == "__main__":
    main(sys.argv[1:])
