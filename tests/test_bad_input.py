"""Bad input is named in one line or counted and skipped, never a traceback or a silent loss:
oversized images, unreadable files in evaluation, malformed JSON, wrong paths and devices, worker counts."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pytest
import torch

import lpr4m_embedding_eval
import lpr4m_train
from dataloaders.lpr4m import load_lpr4m_test
from dataloaders.synthetic import make_synthetic_dataset
from modules.checkpoint import export_model
from modules.config import VISION_CONFIGS, RICEConfig
from modules.rice import RICEModel
from utils.eval import retrieval
from utils.runtime import resources
from utils.train.params import parse_args

TINY = dict(num_train_lives=2, num_val_lives=1, num_test_lives=2, products_per_shop=4, categories_per_shop=2,
            clips_per_product=2, test_clips_per_product=1, min_frames=3, max_frames=6, image_size=48,
            mf_train_products=1, mf_test_products=1, mf_videos_per_product=1, mf_seconds=(1, 1), mf_fps=2)


def bomb_png(path: Path, side: int = 15000) -> Path:
    """A PNG whose header says side x side pixels (over PIL's decompression-bomb limit); no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def lpr(tmp_path):
    """A private tiny synthetic LPR set (the tests damage its files) and a tiny model file."""
    root = Path(make_synthetic_dataset(tmp_path / "data", seed=5, **TINY)["lpr4m"])
    torch.manual_seed(0)
    model = RICEModel(RICEConfig(VISION_CONFIGS["tiny"]))
    torch.save(export_model(model, model.config.to_dict(), {}), tmp_path / "model.pt")
    return root, tmp_path / "model.pt"


def _eval(root, ckpt, out, *extra):
    """Evaluation by embedding, or with PMD re-ranking when `extra` names a PMD row."""
    rerank = "icl_pmd" in extra
    return lpr4m_embedding_eval.main(["--data_root", str(root), "--ckpt_path", str(ckpt), "--output_dir", str(out),
                                      *([] if rerank else ["--embedding_sim"]), "--num_workers", "0",
                                      "--no_progress", *extra])


def test_oversized_and_truncated_files_are_counted_named_and_listed(lpr, tmp_path, capsys):
    root, ckpt = lpr
    split = load_lpr4m_test(root)
    bomb = bomb_png(Path(split.gallery[0].path))  # keeps its .jpg name: PIL reads by content
    frame = Path(split.queries[0].frame_paths[0])
    frame.write_bytes(frame.read_bytes()[:200])  # a truncated JPEG
    metrics = _eval(root, ckpt, tmp_path / "out")
    out = capsys.readouterr().out
    assert metrics["num_unreadable_gallery_images"] == 1 and metrics["num_unreadable_query_frames"] == 1
    assert metrics["num_missing_gallery_images"] == 1 and metrics["num_queries"] == len(split.queries)
    assert str(bomb) in out and str(frame) in out  # named in the log
    listed = (tmp_path / "out" / "skipped_files.txt").read_text().splitlines()
    assert sorted(listed) == sorted([f"gallery images\t{bomb}", f"query frames\t{frame}"])


def test_oversized_training_image_is_skipped(lpr, tmp_path):
    root, _ = lpr
    for image in sorted((root / "training_image").rglob("*.jpg"))[:1]:
        bomb_png(image)
    done = lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(root), "--model_config", "tiny",
                             "--max_frames", "2", "--batch_size", "8", "--epochs", "1", "--num_workers", "1",
                             "--no_progress", "--no_tensorboard", "--output_dir", str(tmp_path / "run")])
    assert done["step"] >= 1 and Path(done["model_path"]).is_file()


def _first_entry(change):
    """A breaker that applies `change` to the first entry of the file's object (the rest stays valid)."""
    def breaker(entries: dict) -> dict:
        first = next(iter(entries))
        entries[first] = change(entries[first])
        return entries
    return breaker


@pytest.mark.parametrize("name, breaker, message", [
    ("query_tenframes.json", lambda entries: [1, 2, 3],
     r"query_tenframes\.json: expected a JSON object .* found array"),
    ("query_tenframes.json", _first_entry(lambda query: {**query, "frames": [1, 2]}),
     r"query_tenframes\.json: frames of '.*' must be a list of ids"),
    ("test_videoid_to_gtimage.json", _first_entry(lambda gt: 5), r"ground truth of '.*' must be a list of ids"),
])
def test_json_of_the_wrong_shape_is_one_line(lpr, tmp_path, expect_error, name, breaker, message):
    root, ckpt = lpr
    target = next((root / "annotations").glob(name.replace(".json", "*.json")))
    target.write_text(json.dumps(breaker(json.loads(target.read_text()))))
    with expect_error(message):
        _eval(root, ckpt, tmp_path / "out")


def test_a_folder_as_checkpoint_names_the_files_inside(lpr, tmp_path, expect_error):
    root, ckpt = lpr
    with expect_error(r"is a folder, not a checkpoint file \(it holds model\.pt\).*model\.pt"):
        _eval(root, ckpt.parent, tmp_path / "out")


def test_unwritable_output_dir_fails_before_any_encoding(lpr, tmp_path, expect_error, monkeypatch):
    root, ckpt = lpr
    monkeypatch.setattr(retrieval, "extract_features", lambda *a, **k: pytest.fail("encoding started"))
    (tmp_path / "a_file").write_text("")
    with expect_error(r"--output_dir .*a_file/out is not writable"):
        _eval(root, ckpt, tmp_path / "a_file" / "out")
    with expect_error(r"--output_dir .*a_file/run is not writable"):
        lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(root), "--model_config", "tiny",
                          "--output_dir", str(tmp_path / "a_file" / "run"), "--num_workers", "0"])


def test_training_n_gpu_says_to_use_torchrun(expect_error):
    base = ["--dataset", "synthetic"]
    assert parse_args([*base, "--n_gpu", "1"]).n_gpu == 1  # one process: consistent, accepted
    with expect_error(r"--n_gpu 2, but 1 training process.*torchrun --nproc_per_node 2 lpr4m_train.py"):
        parse_args([*base, "--n_gpu", "2"])


def test_num_workers_default_follows_the_cpus(monkeypatch):
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert parse_args(["--dataset", "synthetic"]).num_workers == 8  # 16 CPUs, one process: capped at 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert parse_args(["--dataset", "synthetic"]).num_workers == 3  # 4 CPUs per process, one for itself
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert parse_args(["--dataset", "synthetic"]).num_workers == 1  # 2 CPUs: below PyTorch's warning level
    assert parse_args(["--dataset", "synthetic", "--num_workers", "0"]).num_workers == 0


def test_re_ranking_with_an_untrained_pmd_warns(small_data, tmp_path, capsys):
    run = lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(small_data / "lpr4m"), "--model_config", "tiny",
                            "--row", "icl_pmd", "--max_frames", "2", "--batch_size", "8", "--max_steps", "2",
                            "--num_workers", "0", "--no_progress", "--no_tensorboard", "--output_dir",
                            str(tmp_path / "run")])
    saved = torch.load(run["model_path"], weights_only=True)
    pmd_loss = saved["final_losses"]["pmd"]
    assert pmd_loss > 0.9 * math.log(4)  # two steps: still at chance
    flags = ["--row", "icl_pmd", "--rerank_topk", "2"]
    metrics = _eval(small_data / "lpr4m", run["model_path"], tmp_path / "eval", *flags)
    assert "barely learned" in capsys.readouterr().out and "barely learned" in metrics["warnings"][0]
    # The same weights with a final PMD loss well below chance: no warning.
    saved["final_losses"]["pmd"] = 0.5 * math.log(4)
    torch.save(saved, tmp_path / "learned.pt")
    metrics = _eval(small_data / "lpr4m", tmp_path / "learned.pt", tmp_path / "eval2", *flags)
    assert "warnings" not in metrics and "barely learned" not in capsys.readouterr().out
