"""benchmarks/bench_train.py runs every configuration kind on a tiny model (figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_every_configuration_kind_prints_a_row():
    proc = _run("--model", "tiny", "--device", "cpu", "--warmup", "1", "--steps", "1",
                "--configs", "fp32", "fp32+ckpt", "fp32+acc2", "fp32+ckpt+acc4")
    assert proc.returncode == 0, proc.stderr
    assert "1 warm-up + 1 timed steps" in proc.stdout
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.split() and line.split()[0].startswith("fp32")}
    assert set(rows) == {"fp32", "fp32+ckpt", "fp32+acc2", "fp32+ckpt+acc4"}
    for name, row in rows.items():
        seconds, pairs_per_s, peak_gib = (float(x) for x in row[1:4])
        assert seconds > 0 and pairs_per_s > 0 and peak_gib > 0, row
    # Same seed, same data, exact accumulation and recomputation: the loss after the steps agrees.
    losses = {float(row[5]) for row in rows.values()}
    assert max(losses) - min(losses) < 2e-3, rows


def test_vs_encoder_adds_the_encoder_alone_and_the_ratio():
    proc = _run("--model", "tiny", "--device", "cpu", "--warmup", "1", "--steps", "3", "--vs_encoder",
                "--configs", "fp32", "fp32+shared")
    assert proc.returncode == 0, proc.stderr
    assert "model/enc" in proc.stdout and "step/enc" in proc.stdout and "of the step's 44 images" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].startswith("fp32")]
    assert [row[0] for row in rows] == ["fp32", "fp32+shared"]
    for row in rows:
        assert len(row) == 9, row
        encoder_s, model_ratio, step_ratio = float(row[6]), float(row[7]), float(row[8])
        # The model runs the same encoder pass plus the heads, the step adds the optimizer: never cheaper
        # than the encoder by more than timing noise (tiny model, so the heads are a large share).
        assert encoder_s > 0 and model_ratio > 0.8 and step_ratio > 0.8, row


@pytest.mark.parametrize("bad", ["fp64", "fp32+acc0", "fp32+ckpt+ckpt", "fp32+accx", "fp32+shared+shared"])
def test_bad_configuration_is_a_usage_error(bad):
    proc = _run("--model", "tiny", "--configs", bad)
    assert proc.returncode == 2 and "expected fp32, bf16 or fp16" in proc.stderr


def test_accumulation_must_divide_the_batch():
    proc = _run("--model", "tiny", "--device", "cpu", "--batch", "4", "--warmup", "1", "--steps", "1",
                "--configs", "fp32+acc3")
    assert proc.returncode == 1
    assert "not divisible into 3 micro-batches" in proc.stdout + proc.stderr
