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

import pytest
import torch

from tests.processes import descendants, state
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


def _signal_job(pid: int, sig: int) -> list[int]:
    """Send `sig` to `pid` and every process below it (torchrun puts its workers in sessions of their
    own, so a process group would not reach them; a scheduler's signal reaches all of a job's
    processes); return them."""
    job = [pid, *descendants(pid)]
    for member in job:
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass
    return job


def _all_ended(pids: list[int], timeout: float) -> bool:
    """Whether every process in `pids` has gone (or is a zombie) within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(state(pid) in (None, "Z") for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_saves_and_resume_finishes_identically(small_data, tmp_path):
    """SIGTERM to every process of the job, as a cluster stops one (torchrun, the training processes,
    their loading workers and the workers' fork server): the current step finishes, last.pt is
    written, the run exits and leaves no process behind; --resume latest then ends bit-identical
    to an uninterrupted run. Two processes agree on stopping only every STOP_CHECK_EVERY steps
    (one all-reduce and a device wait each), so they stop at such a step."""
    from utils.train.trainer import STOP_CHECK_EVERY

    steps = 2 * STOP_CHECK_EVERY + 4
    args = _args(small_data, tmp_path / "run")
    args = args[:args.index("--max_steps")] + ["--max_steps", str(steps)] + args[args.index("--max_steps") + 2:]
    args[args.index("--save_every_steps") + 1] = "0"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    train = args[1:]  # lpr4m_train.py and its flags
    reference = [a if a != str(tmp_path / "run") else str(tmp_path / "reference") for a in train]
    subprocess.run(launch + reference, env=_env(), check=True, capture_output=True, timeout=TIMEOUT)

    proc = subprocess.Popen(launch + train, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + TIMEOUT
    while _steps_logged(tmp_path / "run") < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    job = _signal_job(proc.pid, signal.SIGTERM)
    assert len(job) >= 6, job  # torchrun, 2 training processes, the fork servers, the loading workers
    output = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode != 0 and output.count("stopped by a signal at step") == 2, output[-3000:]
    assert _all_ended(job, 30)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert saved % STOP_CHECK_EVERY == 0 and 0 < saved < steps, saved
    assert not (tmp_path / "run" / "model.pt").exists()

    resumed = subprocess.run(launch + train, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, got = _weights(tmp_path / "reference" / "model.pt"), _weights(tmp_path / "run" / "model.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_to_every_process_saves_with_loading_workers(small_data, tmp_path, sig):
    """One process with a loading worker, the signal sent to both (a scheduler's SIGTERM, Ctrl-C's
    SIGINT): the worker outlives it, the step finishes, last.pt holds it, and both processes end.
    A worker killed by SIGTERM made the run fail halfway through writing last.pt."""
    args = _args(small_data, tmp_path / "run")
    args[args.index("--batch_size") + 1] = "4"  # epochs of 12 steps: the signal comes mid-epoch, the worker up
    args[args.index("--max_steps") + 1] = "40"
    args[args.index("--save_every_steps") + 1] = "0"
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + TIMEOUT
    while _steps_logged(tmp_path / "run") < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    job = _signal_job(proc.pid, sig)
    assert len(job) == 2, job  # the training process and its loading worker
    output = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode != 0 and "stopped by a signal at step" in output, output[-3000:]
    assert _all_ended(job, 30)
    stopped_at = int(output.split("stopped by a signal at step ")[1].split(";")[0])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped_at
    assert stopped_at >= 3 and not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no half-written file
