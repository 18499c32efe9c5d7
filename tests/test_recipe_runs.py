"""Each release recipe trains every row end to end on the CPU, and its model evaluates (re-ranking with PMD).

The modern recipe's runs are tests/test_train_e2e.py. Tiny random-weight ViT on
the small synthetic dataset, 24 steps in-process; the ICL and PMD terms must
fall (v1's PFR term, with PyTorch's default convolutions and no normalisation
of the reconstruction weights, does not reliably fall on random weights; it
must stay finite).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lpr4m_embedding_eval
import lpr4m_train
from utils.train.logs import read_log

ROWS = {
    "icl": ["--sim_header", "mean_pooling", "--one_stage"],
    "icl_pmd": ["--sim_header", "cross_attention"],
    "icl_pmd_pfr": ["--sim_header", "cross_attention", "--recons_feat"],
}
# recipe: (flags, the fraction of the first steps' ICL+PMD the last steps must stay below). v2's ICL
# starts at 16·cos, near chance on random weights, so its loss has less room to fall in 24 steps;
# v2's fp16 AMP is GPU-only, so the CPU runs it in fp32.
RECIPES = {"v1_release": (["--lr", "1e-3", "--coef_lr", "1"], 0.9),
           "v2_release": (["--lr", "1e-2", "--coef_lr", "0.1", "--precision", "fp32"], 0.95)}
STEPS = 24


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_row_trains_and_evaluates(recipe, row, small_data, tmp_path):
    out, data_root = tmp_path / "run", str(small_data / "lpr4m")
    result = lpr4m_train.main([
        "--dataset", "lpr4m", "--data_root", data_root, "--model_config", "tiny", "--max_frames", "3",
        "--batch_size", "8", "--max_steps", str(STEPS), "--num_workers", "0", "--log_every_steps", "1",
        "--no_progress", "--no_tensorboard", "--output_dir", str(out), "--recipe", recipe, *RECIPES[recipe][0],
        *ROWS[row]])
    assert result["step"] == STEPS
    records = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert records[0]["lr_encoder"] == 0.0  # both releases: the first step has rate 0
    assert all(math.isfinite(r["loss"]) for r in records)
    matched = [sum(r[k] for k in ("icl", "pmd") if k in r) for r in records]
    first, last = sum(matched[:6]) / 6, sum(matched[-6:]) / 6
    assert last < RECIPES[recipe][1] * first, f"{recipe} {row}: ICL+PMD went from {first:.3f} to {last:.3f}"
    assert yaml.safe_load((out / "args.yaml").read_text())["recipe"] == recipe
    metrics = lpr4m_embedding_eval.main([
        "--data_root", data_root, "--ckpt_path", result["model_path"], "--output_dir", str(tmp_path / "eval"),
        "--n_gpu", "1", "--num_workers", "0", "--no_progress", *ROWS[row]])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics is not None and all(0.0 <= saved[k] <= 100.0 for k in ("R1", "R5", "R10"))


def test_v1_release_resumes_bit_identically(small_data, tmp_path):
    """BertAdam's fp16 state and the fp16 weights survive a checkpoint: resuming from the epoch-1
    checkpoint ends with the uninterrupted run's weights, bit for bit (one thread, as the resume test)."""
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, str(root / "lpr4m_train.py"), "--dataset", "lpr4m", "--data_root",
            str(small_data / "lpr4m"), "--model_config", "tiny", "--max_frames", "3", "--batch_size", "8",
            "--max_steps", "8", "--num_workers", "0", "--no_progress", "--no_tensorboard", "--keep_checkpoints", "0",
            "--recipe", "v1_release", *RECIPES["v1_release"][0], *ROWS["icl_pmd_pfr"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(name, None)
    subprocess.run([*args, "--output_dir", str(tmp_path / "a")], env=env, check=True, capture_output=True, timeout=120)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "epoch_1.pt", tmp_path / "b" / "checkpoints" / "last.pt")
    subprocess.run([*args, "--output_dir", str(tmp_path / "b"), "--resume", "latest"], env=env, check=True,
                   capture_output=True, timeout=120)
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True)["model"] for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["state"]
    assert any(s["exp_avg"].dtype == torch.float16 for s in state.values())  # fp16 moments were saved
