"""Each ablation row trains end to end on the CPU, its loss falls, and its model evaluates.

Tiny random-weight ViT on the small synthetic dataset; every row runs a few
dozen steps in-process through `lpr4m_train.main`, and the exported model.pt
goes straight into `lpr4m_embedding_eval.main` with the row's seed flags.
"""

import json

import pytest

import lpr4m_embedding_eval
import lpr4m_train
from utils.train.logs import read_log

ROWS = {
    "ICL": ["--sim_header", "mean_pooling", "--one_stage"],
    "ICL+PMD": ["--sim_header", "cross_attention", "--cross_num_hidden_layers", "2"],
    "ICL+PMD+PFR": ["--sim_header", "cross_attention", "--cross_num_hidden_layers", "2", "--recons_feat"],
}
LOSSES = {"ICL": {"icl"}, "ICL+PMD": {"icl", "pmd"}, "ICL+PMD+PFR": {"icl", "pmd", "pfr"}}
STEPS = 36


@pytest.mark.parametrize("row", list(ROWS))
def test_row_trains_loss_falls_and_model_evaluates(row, small_data, tmp_path):
    out = tmp_path / "run"
    data_root = str(small_data / "lpr4m")
    result = lpr4m_train.main([
        "--dataset", "lpr4m", "--data_root", data_root, "--model_config", "tiny", "--max_frames", "3",
        "--batch_size", "8", "--max_steps", str(STEPS), "--lr", "1e-3", "--coef_lr", "1", "--num_workers", "0",
        "--log_every_steps", "1", "--no_progress", "--no_tensorboard", "--output_dir", str(out), *ROWS[row]])
    assert result["step"] == STEPS

    records = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert set(records[0]) >= LOSSES[row] | {"loss", "lr_encoder", "samples_per_s", "mem_mb"}
    assert ("lr_heads" in records[0]) == (row != "ICL")  # the ICL row has no new modules
    assert not ({"icl", "pmd", "pfr"} - LOSSES[row]) & set(records[0])
    first = sum(r["loss"] for r in records[:6]) / 6
    last = sum(r["loss"] for r in records[-6:]) / 6
    assert last < 0.9 * first, f"{row}: loss went from {first:.3f} (first 6 steps) to {last:.3f} (last 6)"

    metrics = lpr4m_embedding_eval.main([
        "--data_root", data_root, "--ckpt_path", result["model_path"], "--output_dir", str(tmp_path / "eval"),
        "--n_gpu", "1", "--embedding_sim", "--num_workers", "0", "--no_progress", *ROWS[row]])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["checkpoint_format"] == "ours"
    for k in ("R1", "R5", "R10"):
        assert 0.0 <= saved[k] <= 100.0
    assert metrics is not None
