"""LPR750K release layout and original LPR4M layout (img2dataset shards) on synthetic data."""
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from dataloaders.img2dataset_index import id_from_url, load_img2dataset_index
from dataloaders.lpr4m import load_lpr4m_test, load_lpr4m_train
from dataloaders.synthetic import make_synthetic_dataset
from tools.index_img2dataset import main as index_main
from utils.errors import DataError

TINY = dict(num_train_lives=2, num_val_lives=1, num_test_lives=2, products_per_shop=4, categories_per_shop=2,
            clips_per_product=2, test_clips_per_product=1, min_frames=3, max_frames=12, image_size=32, mf_train_products=1,
            mf_test_products=1, mf_videos_per_product=1, mf_seconds=(1, 1), mf_fps=2)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def lpr(tmp_path_factory):
    return Path(make_synthetic_dataset(tmp_path_factory.mktemp("syn"), seed=0, **TINY)["lpr4m"])


def test_training_pairs_match_the_annotation_rows(lpr):
    tsv = next((lpr / "annotations").glob("training_videoinfo_[0-9]*.txt"))
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    pairs = load_lpr4m_train(lpr)
    assert tsv.name == f"training_videoinfo_{len(rows)}.txt" == "training_videoinfo_16.txt"   # 2 x 4 x 2
    assert [p.clip_id for p in pairs] == [r[0] for r in rows]
    for pair, row in zip(pairs, rows):
        assert re.fullmatch(UUID + r"-\d+-\d+", pair.clip_id) and re.fullmatch(UUID, pair.image_id)
        assert pair.image_id == row[3] and pair.image_path == str(lpr / row[4])
        assert 3 <= len(pair.frame_paths) <= 12 and all(Path(f).is_file() for f in pair.frame_paths)
        assert [Path(f).stem for f in pair.frame_paths] == [f"{pair.clip_id}-{k:04d}" for k in range(len(pair.frame_paths))]
    val = load_lpr4m_train(lpr, split="val")
    assert len(val) == 4
    live = lambda ps: {p.clip_id[:36] for p in ps}  # noqa: E731
    assert len(live(pairs)) == 2 and len(live(val)) == 1 and not live(pairs) & live(val)


def test_test_split_has_per_livestream_galleries(lpr):
    split = load_lpr4m_test(lpr)
    assert split.per_group and len(split.queries) == 8 and len(split.gallery) == 2 * 5  # 4 products + 1 duplicate
    by_group = defaultdict(set)
    for g in split.gallery:
        assert Path(g.path).is_file() and g.path.endswith(f"{g.group}/{g.image_id}-0.jpg")
        by_group[g.group].add(g.image_id)
    assert len(by_group) == 2
    for q in split.queries:
        assert q.group == q.query_id[:36] and set(q.gt) <= by_group[q.group]
        assert 1 <= len(q.frame_paths) <= 10 and all(Path(f).is_file() for f in q.frame_paths)
    assert sorted(len(q.gt) for q in split.queries) == [1] * 6 + [2] * 2


def test_gt_field_is_used_without_the_gt_file(lpr, tmp_path):
    root = tmp_path / "lpr"
    shutil.copytree(lpr / "annotations", root / "annotations")
    next((root / "annotations").glob("test_videoid_to_gtimage_*.json")).unlink()
    gts = {q.query_id: q.gt for q in load_lpr4m_test(root).queries}
    assert gts == {q.query_id: q.gt for q in load_lpr4m_test(lpr).queries}
    # and the file wins over the field when both exist
    ann = root / "annotations"
    data = json.loads((ann / "query_tenframes.json").read_text())
    first = next(iter(data))
    (ann / "test_videoid_to_gtimage_1.json").write_text(json.dumps({k: ["x"] for k in data}))
    assert load_lpr4m_test(root).queries[0].gt == ["x"] and load_lpr4m_test(root).queries[0].query_id == first


def _annotations_copy(lpr, tmp_path):
    root = tmp_path / "lpr"
    shutil.copytree(lpr / "annotations", root / "annotations")
    return root, next((root / "annotations").glob("training_videoinfo_[0-9]*.txt"))


@pytest.mark.parametrize("bad, message", [
    ("clip\t['a.jpg'\tbox\timg\tpath", r"training_videoinfo_16\.txt:3: column 1 is not a list literal"),
    ("clip\t['a.jpg']\tbox", r"training_videoinfo_16\.txt:3: expected at least 5 tab-separated columns"),
    ("clip\t[1, 2]\tbox\timg\tpath", r"training_videoinfo_16\.txt:3: column 1 must be a list of strings"),
    ("clip\t__import__('os')\tbox\timg\tpath", r"training_videoinfo_16\.txt:3: column 1 is not a list literal"),
])
def test_malformed_training_line_names_file_and_line(lpr, tmp_path, bad, message):
    root, tsv = _annotations_copy(lpr, tmp_path)
    lines = tsv.read_text().splitlines()
    lines[2] = bad
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        load_lpr4m_train(root)


def test_missing_and_empty_inputs_say_what_and_where(lpr, tmp_path):
    with pytest.raises(DataError, match=r"no training annotation file matching 'training_videoinfo_\*\.txt' in .*empty"):
        (tmp_path / "empty").mkdir()
        load_lpr4m_train(tmp_path / "empty")
    with pytest.raises(DataError, match="data_root .*nowhere does not exist"):
        load_lpr4m_train(tmp_path / "nowhere")
    root, tsv = _annotations_copy(lpr, tmp_path)
    tsv.write_text("\n")
    with pytest.raises(DataError, match=f"no train pairs in {re.escape(str(tsv))}"):
        load_lpr4m_train(root)
    (root / "annotations" / "training_videoinfo_99.txt").write_text("\n")
    with pytest.raises(DataError, match="several training annotation files"):
        load_lpr4m_train(root)
    assert len(load_lpr4m_train(root, annotation=next((lpr / "annotations").glob("training_videoinfo_1*")))) == 16
    (root / "annotations" / "gallery_main.txt").unlink()
    with pytest.raises(DataError, match=r"no gallery file matching 'gallery_main\*\.txt'"):
        load_lpr4m_test(root)
    with pytest.raises(DataError, match="query file nope.json not found"):
        load_lpr4m_test(root, query_file="nope.json")


def _to_img2dataset(files: dict[str, Path], out: Path):
    """Store files the way img2dataset does: 00000/000000001.jpg + .json with the url."""
    for k, (key, src) in enumerate(sorted(files.items())):
        shard = out / f"{k // 10:05d}"
        shard.mkdir(parents=True, exist_ok=True)
        stem = shard / f"{k:09d}"
        shutil.copy(src, stem.with_suffix(".jpg"))
        stem.with_suffix(".json").write_text(json.dumps({"url": f"https://cdn.example.com/x/{key}.jpg?sz=256",
                                                         "status": "success"}))
    # a failed download: metadata without the image file
    (out / "00000" / "000009999.json").write_text(json.dumps({"url": "https://e.com/lost.jpg", "status": "failed"}))


def test_original_layout_through_an_img2dataset_index(lpr, tmp_path):
    release_train, release_test = load_lpr4m_train(lpr), load_lpr4m_test(lpr)
    frames = {Path(f).stem: Path(f) for p in release_train for f in p.frame_paths}
    frames.update({Path(f).stem: Path(f) for q in release_test.queries for f in q.frame_paths})
    images = {p.image_id: Path(p.image_path) for p in release_train}
    images.update({g.image_id: Path(g.path) for g in release_test.gallery})
    _to_img2dataset(frames, tmp_path / "frames")
    _to_img2dataset(images, tmp_path / "images")
    counts = index_main(["--output", str(tmp_path / "index.tsv"), str(tmp_path / "frames"), str(tmp_path / "images")])
    assert counts == {"indexed": len(frames) + len(images), "missing_file": 2, "duplicates": 0, "bad_json": 0}
    index = load_img2dataset_index(tmp_path / "index.tsv")
    assert id_from_url("https://h/a/b/abc-0001.jpg?x=1") == "abc-0001"
    some = next(iter(frames))
    assert Path(index[some]).read_bytes() == frames[some].read_bytes()
    assert re.search(r"/\d{5}/\d{9}\.jpg$", index[some])

    # original annotation files: frame ids and image ids instead of paths
    ann = tmp_path / "orig"
    ann.mkdir()
    rows = [f"{p.clip_id}\t{json.dumps([Path(f).stem for f in p.frame_paths])}\t[]\t{p.image_id}\ttitle\t0\tcat\tasr\t1\t1\t1"
            for p in release_train]
    (ann / "training_videoinfo_full_16.txt").write_text("\n".join(rows) + "\n")
    (ann / "test_videoid_to_gtimage_8.json").write_text(json.dumps({q.query_id: q.gt for q in release_test.queries}))
    (ann / "test_frameid2gtbox_8_1.json").write_text(json.dumps(
        {Path(f).stem: [0, 0, 1, 1] for q in reversed(release_test.queries) for f in q.frame_paths}))
    galleries = defaultdict(list)
    for g in release_test.gallery:
        galleries[g.group].append(g.image_id)
    (ann / "test_liveid_to_gallery_2.json").write_text(json.dumps(galleries))

    train = load_lpr4m_train(ann, index=tmp_path / "index.tsv")
    assert [(p.clip_id, p.image_id, len(p.frame_paths)) for p in train] == \
           [(p.clip_id, p.image_id, len(p.frame_paths)) for p in release_train]
    assert all(Path(a).read_bytes() == Path(b).read_bytes() for p, r in zip(train, release_train)
               for a, b in zip(p.frame_paths + [p.image_path], r.frame_paths + [r.image_path]))
    test = load_lpr4m_test(ann, index=index)
    assert [(q.query_id, q.gt, q.group, [Path(f).read_bytes() for f in q.frame_paths]) for q in test.queries] == \
           [(q.query_id, q.gt, q.group, [Path(f).read_bytes() for f in q.frame_paths]) for q in release_test.queries]
    assert [(g.image_id, g.group) for g in test.gallery] == [(g.image_id, g.group) for g in release_test.gallery]

    # ids missing from the index: frames dropped, images kept with an empty path
    del index[release_test.gallery[0].image_id]
    del index[Path(release_test.queries[0].frame_paths[0]).stem]
    test = load_lpr4m_test(ann, index=index)
    assert test.gallery[0].path == "" and len(test.queries[0].frame_paths) == len(release_test.queries[0].frame_paths) - 1


def test_gallery_entry_parsing_and_bad_query_entries(lpr, tmp_path):
    from dataloaders.lpr4m import _split_gallery_entry
    uid = "8f3c1a2b-0d4e-4f6a-9b7c-123456789012"
    assert _split_gallery_entry(f"live/{uid}-0.jpg") == ("live", uid)
    assert _split_gallery_entry(f"live/{uid}.jpg") == ("live", uid)      # no -k suffix: keep the whole UUID
    root, _ = _annotations_copy(lpr, tmp_path)
    q = root / "annotations" / "query_tenframes.json"
    data = json.loads(q.read_text())
    data[next(iter(data))] = ["frame.jpg"]
    q.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"query_tenframes\.json: entry '.*' must be an object with a 'frames' list"):
        load_lpr4m_test(root)
    (root / "annotations" / "query_tenframes.json").write_text((lpr / "annotations" / "query_tenframes.json").read_text())
    g = root / "annotations" / "gallery_main.txt"
    g.write_text(g.read_text().splitlines()[0] + "\nno_folder-0.jpg\n")
    with pytest.raises(DataError, match=r"gallery_main\.txt:2: expected 'live_id/<image_id>-0\.jpg', got 'no_folder-0\.jpg'"):
        load_lpr4m_test(root)
    q.write_text("{not json")
    with pytest.raises(DataError, match=r"query_tenframes\.json: not valid JSON"):
        load_lpr4m_test(root)
