"""The synthetic generator: deterministic, sized by its options, docs/data.md ids, a real retrieval problem."""
import filecmp
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from dataloaders.lpr4m import load_lpr4m_test, load_lpr4m_train
from dataloaders.movingfashion import load_movingfashion_test, load_movingfashion_train
from tools.make_synthetic_data import main as make_main

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
ARGS = ["--num_train_lives", "2", "--num_val_lives", "1", "--num_test_lives", "2", "--products_per_shop", "4",
        "--categories_per_shop", "2", "--clips_per_product", "2", "--test_clips_per_product", "1",
        "--min_frames", "11", "--max_frames", "12", "--image_size", "40", "--mf_train_products", "2",
        "--mf_test_products", "3", "--mf_videos_per_product", "2", "--mf_seconds", "2", "2", "--mf_fps", "2"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    a, b, c = (tmp_path_factory.mktemp(n) for n in "abc")
    make_main(["--output_dir", str(a), *ARGS])
    make_main(["--output_dir", str(b), *ARGS])
    make_main(["--output_dir", str(c), "--seed", "1", *ARGS])
    return a, b, c


def _tree(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_same_seed_same_files_other_seed_other_data(made):
    a, b, c = made
    files = _tree(a)
    assert files == _tree(b)
    same_bytes = [f for f in files if not f.endswith(".mp4")]      # encoder metadata aside, pixels are equal
    match, mismatch, errors = filecmp.cmpfiles(a, b, same_bytes, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(same_bytes)
    assert (a / "lpr4m/annotations/query_tenframes.json").read_text() != \
           (c / "lpr4m/annotations/query_tenframes.json").read_text()


def test_options_set_the_sizes(made):
    lpr, mf = made[0] / "lpr4m", made[0] / "movingfashion"
    train, val, test = load_lpr4m_train(lpr), load_lpr4m_train(lpr, "val"), load_lpr4m_test(lpr)
    assert len(train) == 2 * 4 * 2 and len(val) == 4 and len(test.queries) == 2 * 4 * 1
    assert len(test.gallery) == 2 * (4 + 1)
    assert {len(p.frame_paths) for p in train} == {11, 12} and {len(q.frame_paths) for q in test.queries} == {10}
    from PIL import Image
    assert Image.open(train[0].frame_paths[0]).size == (40, 40) == Image.open(test.gallery[0].path).size
    assert len(load_movingfashion_train(mf)) == 4 and len(load_movingfashion_test(mf).queries) == 3
    assert all(len(p.frame_paths) == 2 for p in load_movingfashion_train(mf))   # 2 s at 1 fps
    import av
    with av.open(str(next((mf / "videos").glob("*.mp4")))) as video:
        assert sum(1 for _ in video.decode(video=0)) == 2 * 2                    # 2 s at --mf_fps 2


def test_ids_follow_the_lpr4m_formats(made):
    lpr = made[0] / "lpr4m"
    for p in load_lpr4m_train(lpr):
        m = re.fullmatch(f"({UUID})-(\\d+)-(\\d+)", p.clip_id)
        assert m and int(m[2]) < int(m[3]) and re.fullmatch(UUID, p.image_id)
        assert all(Path(f).stem == f"{p.clip_id}-{k:04d}" for k, f in enumerate(p.frame_paths))
    test = load_lpr4m_test(lpr)
    assert all(re.fullmatch(UUID, g.group) and re.fullmatch(UUID, g.image_id) for g in test.gallery)
    # boxes column: one [x1, y1, x2, y2] per frame
    row = next((lpr / "annotations").glob("training_videoinfo_[0-9]*.txt")).read_text().splitlines()[0].split("\t")
    assert len(json.loads(row[2])) == len(load_lpr4m_train(lpr)[0].frame_paths) and len(row) == 10


def test_every_shop_has_same_category_distractors(made):
    lpr = made[0] / "lpr4m"
    rows = [line.split("\t") for line in
            next((lpr / "annotations").glob("training_videoinfo_[0-9]*.txt")).read_text().splitlines()]
    products = defaultdict(set)     # live_id -> {(image_id, category)}
    for r in rows:
        products[r[0][:36]].add((r[3], r[6]))
    for shop in products.values():
        per_category = Counter(cat for _, cat in shop)
        assert len(per_category) == 2 and min(per_category.values()) >= 2
