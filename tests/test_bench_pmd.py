"""benchmarks/bench_pmd.py runs on a tiny model and prints its figures as key=value on the last line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pmd_benchmark_prints_its_figures_last():
    for extra in ([], ["--shared_dropout", "--pmd_chunk_size", "5"]):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pmd.py"), "--model", "tiny",
                               "--device", "cpu", "--batch", "4", "--frames", "2", "--warmup", "1", "--steps", "1",
                               *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        figures = dict(item.split("=") for item in proc.stdout.strip().splitlines()[-1].split())
        assert figures["pairs"] == "16" and figures["chunk"] == ("5" if extra else "16")
        assert figures["shared_dropout"] == ("1" if extra else "0")
        assert float(figures["pmd_ms_per_step"]) > 0 and float(figures["pmd_pairs_per_s"]) > 0
