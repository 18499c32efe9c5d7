"""Nothing is lost: a run never overwrites another, damaged checkpoints fall back, a resume with
another batch size skips and repeats no sample, validation also runs at the end of a short run."""

from __future__ import annotations

import json
import logging

import torch

import lpr4m_train
from utils.train import trainer
from utils.train.logs import read_log

PAIRS = 48  # the small synthetic set's training pairs


def _argv(data, out, *extra: str, steps: int | None = 2) -> list[str]:
    argv = ["--dataset", "lpr4m", "--data_root", str(data / "lpr4m"), "--model_config", "tiny",
            "--max_frames", "2", "--batch_size", "8", "--lr", "1e-3", "--coef_lr", "1", "--num_workers", "0",
            "--log_every_steps", "1", "--no_progress", "--no_tensorboard", "--output_dir", str(out)]
    return argv + (["--max_steps", str(steps)] if steps is not None else []) + list(extra)


def test_a_second_run_into_the_same_folder_is_refused_or_overwritten(small_data, tmp_path, expect_error):
    out = tmp_path / "run"
    lpr4m_train.main(_argv(small_data, out, "--batch_size", "16", "--epochs", "1", steps=None))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert (out / "checkpoints" / "epoch_1.pt").is_file()
    with expect_error(r"already holds a run .*--resume latest.*--overwrite"):
        lpr4m_train.main(_argv(small_data, out))
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    lpr4m_train.main(_argv(small_data, out, "--overwrite", steps=2))
    assert not (out / "checkpoints" / "epoch_1.pt").exists()  # the old run's files are gone, not mixed in
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2]
    with expect_error("either --resume .* or --overwrite"):
        lpr4m_train.main(_argv(small_data, out, "--overwrite", "--resume", "latest"))


def test_resume_latest_falls_back_past_a_damaged_last_checkpoint(small_data, tmp_path, caplog, expect_error):
    out = tmp_path / "run"
    lpr4m_train.main(_argv(small_data, out, "--batch_size", "16", "--epochs", "2", steps=None))  # 3 steps/epoch
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as by a full disk
    stale = out / "checkpoints" / ".last.pt.tmp12345"
    stale.write_bytes(b"half of a checkpoint")  # left by a kill during a write
    done = lpr4m_train.main(_argv(small_data, out, "--batch_size", "16", "--epochs", "3", "--resume", "latest",
                                  steps=None))
    assert "continuing from" in caplog.text and "epoch_2.pt" in caplog.text
    assert done["step"] == 9 and not stale.exists()
    # Nothing readable at all: one clear error.
    for path in (out / "checkpoints").glob("*.pt"):
        path.write_bytes(b"garbage")
    with expect_error("no checkpoint in .* can be read"):
        lpr4m_train.main(_argv(small_data, out, "--resume", "latest", steps=12))


def test_resume_with_another_batch_size_sees_every_sample_once(small_data, tmp_path, monkeypatch):
    seen = []
    real = trainer.train_step

    def spy(model, batch, *rest):
        seen.append(batch["index"].tolist())
        return real(model, batch, *rest)

    monkeypatch.setattr(trainer, "train_step", spy)
    out = tmp_path / "run"
    lpr4m_train.main(_argv(small_data, out, steps=3))  # 3 batches of 8: 24 samples of epoch 0
    lpr4m_train.main(_argv(small_data, out, "--batch_size", "12", "--resume", "latest", steps=5))
    assert [len(b) for b in seen] == [8, 8, 8, 12, 12]
    epoch0 = [i for batch in seen for i in batch]
    assert sorted(epoch0) == list(range(PAIRS))  # every pair exactly once in the epoch
    state = torch.load(out / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert state["step"] == 5 and state["epoch"] == 1 and state["sample_in_epoch"] == 0


def test_validate_runs_at_the_end_of_a_run_shorter_than_an_epoch(small_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rice.train")
    out = tmp_path / "run"
    lpr4m_train.main(_argv(small_data, out, "--validate", "--val_max_queries", "4", steps=2))
    val = [r for r in read_log(out / "log.jsonl") if "val" in r]
    assert [r["step"] for r in val] == [2] and set(val[0]["val"]) == {"R1", "R5", "R10"}
    assert "validation at the end of training (step 2)" in caplog.text
    # A run that ends on an epoch boundary validates once there, not twice.
    lpr4m_train.main(_argv(small_data, tmp_path / "epoch", "--validate", "--val_max_queries",
                           "4", "--batch_size", "16", "--epochs", "1", steps=None))
    assert [r["step"] for r in read_log(tmp_path / "epoch" / "log.jsonl") if "val" in r] == [3]


def test_old_checkpoints_counted_batches(small_data, tmp_path):
    """A training checkpoint of an earlier version (batch_in_epoch) resumes at the same sample."""
    out = tmp_path / "run"
    lpr4m_train.main(_argv(small_data, out, steps=2))
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["batch_in_epoch"] = state.pop("sample_in_epoch") // 8
    torch.save(state, last)
    done = lpr4m_train.main(_argv(small_data, out, "--resume", "latest", steps=3))
    assert done["step"] == 3
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 3
