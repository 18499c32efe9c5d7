"""Datasets on synthetic LPR data: items, masks, bad files, skip reports, determinism."""
import logging
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataloaders.datasets import ClipDataset, ImageDataset, PairDataset, SkipReport, collate_samples
from dataloaders.lpr4m import load_lpr4m_test, load_lpr4m_train
from dataloaders.records import TrainPair
from dataloaders.sampling import train_frame_indices
from dataloaders.synthetic import make_synthetic_dataset
from dataloaders.transforms import build_transform

TINY = dict(num_train_lives=2, num_val_lives=1, num_test_lives=1, products_per_shop=4, categories_per_shop=2,
            clips_per_product=2, min_frames=3, max_frames=12, image_size=48, mf_train_products=1,
            mf_test_products=1, mf_videos_per_product=1, mf_seconds=(1, 1), mf_fps=2)


@pytest.fixture(scope="module")
def lpr(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), seed=3, **TINY)["lpr4m"]


@pytest.fixture
def t64():
    return build_transform("v1", train=False, image_size=32)


def test_pair_items_have_contract_shapes(lpr, t64):
    pairs = load_lpr4m_train(lpr)
    item = PairDataset(pairs, t64, t64, max_frames=10)[0]
    assert item["image"].shape == (3, 32, 32) and item["frames"].shape == (10, 3, 32, 32)
    n = int(item["frame_mask"].sum())
    assert item["frame_mask"].dtype == torch.bool and item["frame_mask"][:n].all()
    assert item["frames"][n:].eq(0).all() and item["index"] == 0
    assert item["skipped"] == [] and item["replaced"] == 0


def _copy_pairs(pairs, tmp_path):
    """Private copies of the first pairs' files, so tests can damage them."""
    out = []
    for k, p in enumerate(pairs[:4]):
        d = tmp_path / f"pair{k}"
        d.mkdir()
        frames = [shutil.copy(f, d / f"f{i}.jpg") for i, f in enumerate(p.frame_paths)]
        out.append(TrainPair(p.clip_id, [str(f) for f in frames], p.image_id, str(shutil.copy(p.image_path, d / "img.jpg"))))
    return out


def _train_choice(n: int, seed: int, index: int, epoch: int = 0) -> list[int]:
    """The frames PairDataset picks for sample `index` (the training rule with its per-sample rng)."""
    return train_frame_indices(n, 10, np.random.default_rng((seed, epoch, index)))


def test_bad_frame_is_dropped_and_reported(lpr, t64, tmp_path):
    pairs = _copy_pairs(load_lpr4m_train(lpr), tmp_path)
    n = len(pairs[0].frame_paths)
    open(pairs[0].frame_paths[1], "wb").write(b"not a jpeg")          # corrupt
    ds = PairDataset(pairs, t64, t64, max_frames=10, seed=42)
    chosen = _train_choice(n, seed=42, index=0)
    item = ds[0]
    assert item["index"] == 0 and item["replaced"] == 0
    assert int(item["frame_mask"].sum()) == len(chosen) - (1 in chosen)
    assert item["skipped"] == ([pairs[0].frame_paths[1]] if 1 in chosen else [])


def test_clip_without_readable_frames_is_replaced_by_the_next_sample(lpr, t64, tmp_path, caplog):
    pairs = _copy_pairs(load_lpr4m_train(lpr), tmp_path)
    for f in pairs[1].frame_paths:
        shutil.os.remove(f)
    ds = PairDataset(pairs, t64, t64, max_frames=10, seed=42)
    bad = [pairs[1].frame_paths[i] for i in _train_choice(len(pairs[1].frame_paths), seed=42, index=1)]
    item = ds[1]
    assert item["index"] == 2 and item["replaced"] == 1
    assert item["skipped"] == bad
    assert torch.equal(item["frames"], ds[2]["frames"])
    # aggregated across worker processes by the collate function, reported once by SkipReport
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples)
    report = SkipReport("train", max_examples=3)
    for batch in loader:
        report.update(batch)
    assert report.num_skipped == len(bad) and report.num_replaced == 1
    with caplog.at_level(logging.WARNING):
        line = report.log(epoch=0)
    assert line.startswith(f"epoch 0 train: {len(bad)} unreadable files skipped, 1 samples replaced")
    assert pairs[1].frame_paths[0] in line and line in caplog.text
    assert report.log(epoch=1) is None            # reset after logging; nothing to report


def test_unreadable_image_replaces_sample_and_all_bad_raises(lpr, t64, tmp_path):
    pairs = _copy_pairs(load_lpr4m_train(lpr), tmp_path)
    shutil.os.remove(pairs[3].image_path)
    item = PairDataset(pairs, t64, t64)[3]
    assert item["index"] == 0 and item["skipped"] == [pairs[3].image_path]   # wraps around
    bad = [TrainPair("c", [str(tmp_path / "none.jpg")], "i", str(tmp_path / "none.jpg"))] * 3
    with pytest.raises(RuntimeError, match="all unreadable"):
        PairDataset(bad, t64, t64, max_replacements=5)[0]


def test_eval_datasets_mark_missing_inputs(lpr, t64, tmp_path):
    split = load_lpr4m_test(lpr)
    q = split.queries[0]
    q.frame_paths = [str(tmp_path / "missing.jpg")]
    clips = ClipDataset(split.queries, t64)
    item = clips[0]
    assert not item["frame_mask"].any() and item["skipped"] == q.frame_paths and item["index"] == 0
    split.gallery[1].path = str(tmp_path / "gone.jpg")
    images = ImageDataset(split.gallery, t64)
    assert images[1]["ok"] is False and images[1]["image"].eq(0).all() and images[0]["ok"] is True
    batch = collate_samples([images[0], images[1]])
    assert batch["ok"].tolist() == [True, False] and batch["skipped"] == [split.gallery[1].path]
    assert collate_samples([clips[0], clips[1]])["frames"].shape == (2, 10, 3, 32, 32)
    with pytest.raises(ValueError, match="deterministic transform"):
        ClipDataset(split.queries, build_transform("v2", train=True, image_size=32))


def _batches(ds, workers, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    loader = DataLoader(ds, batch_size=3, shuffle=seed is not None, generator=g, num_workers=workers,
                        collate_fn=collate_samples)
    return [batch for batch in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b)
                                    for k in ("frames", "frame_mask", "index") if k in x)


def test_training_batches_repeat_with_the_same_seed(lpr):
    t = build_transform("v2", train=True, image_size=32)
    pairs = load_lpr4m_train(lpr)
    first = _batches(PairDataset(pairs, t, t, seed=7), 0, seed=1)
    assert _same(first, _batches(PairDataset(pairs, t, t, seed=7), 2, seed=1))   # workers don't matter
    other = PairDataset(pairs, t, t, seed=7)
    other.set_epoch(1)
    assert not _same(first, _batches(other, 0, seed=1))                          # a new epoch differs


def test_eval_batches_are_identical_across_runs(lpr, t64):
    split = load_lpr4m_test(lpr)
    run = lambda w: list(DataLoader(ClipDataset(split.queries, t64), batch_size=4, num_workers=w,  # noqa: E731
                                    collate_fn=collate_samples))
    assert _same(run(0), run(2))
