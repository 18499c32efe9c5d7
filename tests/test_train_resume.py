"""Exact resume: a run killed with SIGKILL mid-epoch and resumed with `--resume latest`
ends with bit-identical weights to an uninterrupted run (CPU, same arguments).

The run uses PMD with dropout (so the restored RNG state matters), PFR, a
data-loading worker, gradient accumulation and two epoch boundaries. The kill
comes at a random step that is not an epoch boundary, after at least one
checkpoint was written.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils.train.logs import read_log

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
STEPS = 14  # 48 pairs / batch 8 = 6 steps per epoch: epochs end at steps 6 and 12


def _args(data: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "lpr4m_train.py"), "--dataset", "lpr4m", "--data_root", str(data / "lpr4m"),
            "--model_config", "tiny", "--sim_header", "cross_attention", "--recons_feat", "--max_frames", "3",
            "--batch_size", "8", "--gradient_accumulation_steps", "2", "--max_steps", str(STEPS), "--lr", "1e-3",
            "--coef_lr", "1", "--num_workers", "1", "--log_every_steps", "1", "--save_every_steps", "1",
            "--no_progress", "--no_tensorboard", "--output_dir", str(out), "--resume", "latest"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(name, None)
    return env


def _steps_logged(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(small_data, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_args(small_data, reference), env=_env(), check=True, capture_output=True, timeout=TIMEOUT)

    kill_at = random.Random().choice([s for s in range(2, STEPS - 1) if s % 6])
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_args(small_data, interrupted), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while _steps_logged(interrupted) < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}"
    assert not (interrupted / "model.pt").exists()
    saved_step = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 1 <= saved_step < STEPS

    resumed = subprocess.run(_args(small_data, interrupted), env=_env(), capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {interrupted / 'checkpoints' / 'last.pt'} at step {saved_step}" in resumed.stderr

    ref, got = _weights(reference / "model.pt"), _weights(interrupted / "model.pt")
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"killed at step {kill_at} (checkpoint at {saved_step}): {different[:5]} differ"
    # The log holds every step exactly once, as the uninterrupted run's does.
    steps = [record["step"] for record in read_log(interrupted / "log.jsonl")]
    assert steps == list(range(1, STEPS + 1))
