"""Training checkpoints: atomic writes, `last` + per-epoch files, exact resume.

A training checkpoint is the model file of modules/checkpoint.py (`export_model`,
read back as format "ours", so it also loads in the evaluation scripts) plus the
optimisation state:

    format        "rice-repro"
    model         the RICEModel state dict (fp32)
    model_config  RICEConfig.to_dict()
    optimizer     AdamW state;  scaler: the fp16 GradScaler state ({} otherwise)
    step          optimizer steps done;  epoch: current epoch;  sample_in_epoch: its samples done
                  (files of older versions hold batch_in_epoch, batches of the run's batch size)
    rng           Python, NumPy, torch CPU (and CUDA) generator states
    args          the resolved command-line arguments

Files are written to a temporary name in the same folder and renamed, so a
kill at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from modules.checkpoint import OUR_FORMAT, export_model
from utils.errors import CheckpointError

LAST = "last.pt"
EPOCH_PATTERN = re.compile(r"^epoch_(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    """torch.save to `path` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    """This process's generators: Python, NumPy, torch CPU and, on a GPU, its OWN device only.

    One device per process (not every visible GPU), so a run resumes on a machine
    that shows each process fewer GPUs (8 per node -> 4 x 2, a narrower
    CUDA_VISIBLE_DEVICES, one GPU per task under srun).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    device = torch.cuda.current_device()
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state and device < len(state["cuda"]):  # files of earlier versions: every visible device
        torch.cuda.set_rng_state(state["cuda"][device], device)


def training_state(model, config: dict, args: dict, optimizer, precision, step: int, epoch: int,
                   sample_in_epoch: int, rngs: list[dict]) -> dict:
    """The whole training checkpoint; `rngs` holds every process's `rng_state()`, in rank order."""
    state = export_model(model, config, args)
    state.update(optimizer=optimizer.state_dict(), scaler=precision.state_dict(), step=step, epoch=epoch,
                 sample_in_epoch=sample_in_epoch, rng=rngs)
    return state


def load_training_state(path: Path) -> dict:
    """Read a training checkpoint written by `training_state` (tensors and plain values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a usable checkpoint"
        raise CheckpointError(f"{path}: cannot read this training checkpoint ({type(err).__name__}: {err})") from None
    missing = {"format", "model", "optimizer", "step", "epoch", "rng"} - set(state)
    if not {"sample_in_epoch", "batch_in_epoch"} & set(state):
        missing.add("sample_in_epoch")
    if state.get("format") != OUR_FORMAT or missing:
        raise CheckpointError(f"{path} is not a training checkpoint of lpr4m_train.py (missing {sorted(missing)}); "
                         "to start from a model file use --init_model instead of --resume")
    return state


def epoch_checkpoints(folder: Path) -> list[Path]:
    """Per-epoch checkpoints in the folder, oldest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := EPOCH_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_epoch_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` per-epoch checkpoints (keep 0: delete none)."""
    if keep <= 0:
        return []
    old = epoch_checkpoints(folder)[:-keep]
    for path in old:
        path.unlink()
    return old
