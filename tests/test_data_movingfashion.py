"""MovingFashion: 1-fps extraction from real mp4 files, resumability, loaders, global gallery."""
import json
import shutil
from pathlib import Path

import av
import pytest

from dataloaders.movingfashion import load_movingfashion_test, load_movingfashion_train
from dataloaders.synthetic import make_synthetic_dataset
from tools.prepare_movingfashion import main as prepare_main
from utils.errors import DataError

TINY = dict(num_train_lives=1, num_val_lives=1, num_test_lives=1, products_per_shop=2, categories_per_shop=1,
            clips_per_product=1, min_frames=2, max_frames=3, image_size=32, mf_train_products=3,
            mf_test_products=3, mf_videos_per_product=2, mf_seconds=(2, 4), mf_fps=3)


@pytest.fixture(scope="module")
def mf(tmp_path_factory):
    return Path(make_synthetic_dataset(tmp_path_factory.mktemp("syn"), seed=1, **TINY)["movingfashion"])


@pytest.fixture
def fresh(mf, tmp_path):
    """A release-layout copy without anything the preparation tool writes."""
    root = tmp_path / "mf"
    shutil.copytree(mf, root, ignore=shutil.ignore_patterns("frames", "annotations"))
    return root


def _seconds(video: Path) -> int:
    with av.open(str(video)) as c:
        n = sum(1 for _ in c.decode(video=0))
        return n, n / float(c.streams.video[0].average_rate)


def test_release_layout_has_real_mp4_files(fresh):
    train = json.loads((fresh / "train.json").read_text())
    test = json.loads((fresh / "test.json").read_text())
    assert len(train) == 3 and all(len(e["video_paths"]) == 2 for e in train.values())
    assert len(test) == 3 and all(len(e["video_paths"]) == 1 for e in test.values())
    for entry in list(train.values()) + list(test.values()):
        assert (fresh / entry["img_path"]).is_file()
        for v in entry["video_paths"]:
            n, seconds = _seconds(fresh / v)
            assert n % 3 == 0 and 2 <= seconds <= 4


def test_prepare_extracts_one_frame_per_second_and_resumes(fresh):
    first = prepare_main(["--root", str(fresh)])
    assert first == {"extracted": 9, "skipped": 0, "failed": []}
    index = json.loads((fresh / "annotations" / "video_frames.json").read_text())
    assert len(index) == 9
    for video, frames in index.items():
        assert len(frames) == _seconds(fresh / video)[1]          # one per second
        assert all((fresh / f).is_file() for f in frames)
        assert frames[0] == f"frames/{Path(video).stem}/{Path(video).stem}-0000.jpg"
    stamps = {p: p.stat().st_mtime_ns for p in (fresh / "frames").rglob("*.jpg")}
    victim = next(iter(index))
    shutil.rmtree(fresh / "frames" / Path(victim).stem)           # as if interrupted on this video
    second = prepare_main(["--root", str(fresh)])
    assert second == {"extracted": 1, "skipped": 8, "failed": []}
    assert json.loads((fresh / "annotations" / "video_frames.json").read_text()) == index
    for p, t in stamps.items():
        if Path(victim).stem not in p.name:
            assert p.stat().st_mtime_ns == t                      # untouched


def test_broken_video_is_reported_and_skipped(fresh):
    train = json.loads((fresh / "train.json").read_text())
    bad = train["train00000"]["video_paths"][0]
    (fresh / bad).write_bytes(b"\x00" * 100)
    result = prepare_main(["--root", str(fresh)])
    assert result["failed"] == [str(fresh / bad)] and result["extracted"] == 8
    pairs = load_movingfashion_train(fresh)
    assert len(pairs) == 5 and Path(bad).stem not in {p.clip_id for p in pairs}


def test_loaders_give_pairs_queries_and_one_global_gallery(mf):
    pairs = load_movingfashion_train(mf)
    train = json.loads((mf / "train.json").read_text())
    assert [(p.clip_id, p.image_id) for p in pairs] == [(Path(v).stem, k) for k, e in train.items() for v in e["video_paths"]]
    assert all(p.image_path == str(mf / "imgs" / f"{p.image_id}.jpg") and p.frame_paths for p in pairs)
    split = load_movingfashion_test(mf)
    assert not split.per_group and {g.group for g in split.gallery} == {""}
    assert [g.image_id for g in split.gallery] == ["test00000", "test00001", "test00002"]
    assert [(q.query_id, q.gt) for q in split.queries] == [(f"test0000{i}_0", [f"test0000{i}"]) for i in range(3)]


def test_shared_image_gets_one_gallery_entry(mf, tmp_path):
    root = tmp_path / "mf"
    shutil.copytree(mf, root)
    test = json.loads((root / "test.json").read_text())
    test["test00002"]["img_path"] = test["test00000"]["img_path"]
    (root / "test.json").write_text(json.dumps(test))
    split = load_movingfashion_test(root)
    assert [g.image_id for g in split.gallery] == ["test00000", "test00001"]
    assert split.queries[2].gt == ["test00000"]


def test_missing_inputs_say_what_to_do(fresh, tmp_path):
    with pytest.raises(DataError, match="video_frames.json not found: extract the frames first with"):
        load_movingfashion_train(fresh)
    with pytest.raises(DataError, match=r"split file .*test\.json not found \(expected the release layout"):
        load_movingfashion_test(tmp_path)
    (fresh / "test.json").write_text(json.dumps({"k": {"img_path": "x.jpg"}}))
    with pytest.raises(DataError, match=r"test\.json: entry 'k' needs 'img_path' and a 'video_paths' list"):
        prepare_main(["--root", str(fresh)])
