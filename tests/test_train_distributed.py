"""lpr4m_train.py under a real torchrun: 2 processes on one node, and 2 "nodes" on loopback.

Both use the gloo backend on the CPU. Each process writes a digest of its final
weights (tests/train_worker.py); DDP must leave every process with identical
weights, and only the main process may write the run's files.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train_worker.py"
TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _train_args(data: Path, out: Path) -> list[str]:
    return ["--dataset", "lpr4m", "--data_root", str(data / "lpr4m"), "--model_config", "tiny",
            "--sim_header", "cross_attention", "--recons_feat", "--max_frames", "3", "--batch_size", "8",
            "--max_steps", "8", "--lr", "1e-3", "--coef_lr", "1", "--num_workers", "0", "--log_every_steps", "2",
            "--save_every_steps", "3", "--no_progress", "--no_tensorboard", "--device", "cpu",
            "--output_dir", str(out)]


def _digests(folder: Path, ranks: int) -> list[list[str]]:
    return [(folder / f"rank{r}.txt").read_text().split() for r in range(ranks)]


def _check_run(out: Path, digests: list[list[str]]) -> None:
    assert len({d[0] for d in digests}) == 1, f"ranks ended with different weights: {digests}"
    assert all(d[1] == "8" and d[2] == "2" for d in digests)
    # The run's files were written once, by rank 0, and the exported model holds the same weights.
    from modules.checkpoint import load_checkpoint
    from modules.rice import RICEModel
    from tests.train_worker import weights_digest

    model = RICEModel.from_checkpoint(load_checkpoint(out / "model.pt"))
    assert weights_digest(model) == digests[0][0]
    steps = [line for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(steps) == 4  # steps 2, 4, 6, 8: one writer
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_1.pt", "last.pt"]


def test_torchrun_two_processes_one_node(small_data, tmp_path):
    out = tmp_path / "run"
    # With gradient accumulation: the gradient cache bypasses DDP's own sync and averages by itself.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path / "digests"), *_train_args(small_data, out), "--gradient_accumulation_steps", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes x 4 pairs" in proc.stderr
    _check_run(out, _digests(tmp_path / "digests", 2))


def _two_nodes(data: Path, tmp_path: Path, outs: list[Path], digests: Path, *extra: str):
    """Two c10d "nodes" on loopback, one process each, node i writing to outs[i]: (exit codes, logs)."""
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = []
    for node, out in enumerate(outs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
               "--rdzv_id", "rice-test", str(WORKER), str(digests), *_train_args(data, out), *extra]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=TIMEOUT)[0])
        finally:
            proc.kill()
    return [p.returncode for p in procs], logs


def test_torchrun_two_nodes_c10d_rendezvous(small_data, tmp_path):
    out = tmp_path / "run"
    codes, logs = _two_nodes(small_data, tmp_path, [out, out], tmp_path / "digests")
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    _check_run(out, _digests(tmp_path / "digests", 2))


def test_batch_not_divisible_by_processes(small_data, tmp_path):
    args = _train_args(small_data, tmp_path / "run")
    args[args.index("--batch_size") + 1] = "7"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path / "digests"), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "--batch_size 7 is not divisible by 2 processes" in proc.stdout + proc.stderr


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_gloo_is_what_cpu_runs_use():
    from utils.runtime.distributed import init_distributed

    env = init_distributed("cpu")  # no torchrun variables: a plain single process, no group
    assert (env.rank, env.world_size, env.device.type) == (0, 1, "cpu")
    assert not torch.distributed.is_initialized()


def test_two_nodes_with_their_own_folders_resume_from_the_same_step_or_stop(small_data, tmp_path):
    """Multi-node resume with one output folder per machine: a node without the checkpoint must not
    start again at step 0 beside the others (they would drift apart, then hang); all stop in one line.
    With the checkpoint copied to both folders, both continue from it and end identical."""
    first = tmp_path / "node0"
    subprocess.run([sys.executable, str(ROOT / "lpr4m_train.py"), *_train_args(small_data, first), "--max_steps", "3"],
                   env=_env(), check=True, capture_output=True, timeout=TIMEOUT)
    second = tmp_path / "node1"
    codes, logs = _two_nodes(small_data, tmp_path, [first, second], tmp_path / "digests", "--resume", "latest")
    assert codes[0] != 0 and codes[1] != 0, "\n".join(log[-2000:] for log in logs)
    for log in logs:
        assert "would continue from different places" in log and "rank 1: step 0" in log, log[-2000:]
    (second / "checkpoints").mkdir(parents=True)
    shutil.copy(first / "checkpoints" / "last.pt", second / "checkpoints" / "last.pt")
    codes, logs = _two_nodes(small_data, tmp_path, [first, second], tmp_path / "digests", "--resume", "latest")
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    digests = _digests(tmp_path / "digests", 2)
    assert digests[0] == digests[1] and digests[0][1] == "8"
