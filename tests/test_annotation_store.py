"""The annotation store and the img2dataset index store give what the TSV says, and cache safely."""
import ast
import json
import multiprocessing
import os
import pickle
from pathlib import Path

import pytest
import torch

from dataloaders import img2dataset_index
from dataloaders.annotations import open_train_store
from dataloaders.img2dataset_index import open_img2dataset_index
from dataloaders.lpr4m import load_lpr4m_train
from dataloaders.records import TrainPair
from utils.errors import DataError

CLIP = "8f3c1a2b-0d4e-4f6a-9b7c-1d2e3f4a5b6c-{}-{}"
IMAGE = "0a1b2c3d-0d4e-4f6a-9b7c-00000000{:04d}"


def _release_lines() -> list[str]:
    """Every form the frame column takes: repr / JSON lists, structured and not."""
    lines = []
    for k in range(30):                            # the release form: one folder per clip, numbered frames
        clip = CLIP.format(k * 1000, k * 1000 + 900)
        frames = [f"training_video_0{1 + k % 2}/{clip}/{clip}-{j:04d}.jpg" for j in range(1 + k % 7)]
        column = repr(frames) if k % 2 else json.dumps(frames)
        lines.append(f"{clip}\t{column}\t[]\t{IMAGE.format(k)}\ttraining_image/{IMAGE.format(k)}.jpg\ttitle\t3\tcat\tspu\tasr")
    odd = [
        ["a/x-9998.jpg", "a/x-9999.jpg", "a/x-10000.jpg"],        # widths differ: fallback table
        ["same/0001.jpg", "same/0001.jpg"],                      # identical frames
        ["no digits.jpg"],                                       # nothing numbered
        ["/abs/clip/0003.png", "/abs/clip/0010.png"],            # absolute paths
        ["été/ß-01.jpg", "été/ß-02.jpg"],                        # non-ASCII
        ["b/1.jpg", "b/22.jpg", "b/333.jpg"],
        [],                                                      # no frames at all
        ["p/12-00.jpg", "p/13-00.jpg"],                          # digits differ before the last run
    ]
    for k, frames in enumerate(odd):
        lines.append(f"odd{k}\t{json.dumps(frames, ensure_ascii=k % 2 == 0)}\tbox\timg{k}\timages/{k}.jpg")
    lines += [
        "mixed\t[\"q/1.jpg\", 'q/2.jpg']\tb\timg\ti.jpg",          # mixed quotes: a Python literal
        "trailing\t['t/1.jpg',]\tb\timg\ti.jpg\textra\tcolumns",   # trailing comma
        "spaced\t[ 's/1.jpg' ,  's/2.jpg' ]\tb\timg\ti.jpg",
        "gaps\t['g/1.jpg','g/2.jpg' , 'g/3.jpg']\tb\timg\ti.jpg",      # separators of several widths
        "escaped\t[\"e\\\\1.jpg\", \"e\\u00e92.jpg\"]\tb\timg\ti.jpg",
        "commas\t['c/1,2.jpg', 'c/3,4.jpg']\tb\timg\ti.jpg",
        "quotes\t[\"q'1.jpg\", \"q'2.jpg\"]\tb\timg\ti.jpg",
        "",
        "   ",
        "crlf\t['r/1.jpg']\tb\timg\tr.jpg\r",
    ]
    return lines


def _expected(tsv: Path, root) -> list[TrainPair]:
    """A straightforward parse of the TSV: what load_lpr4m_train returned as a list."""
    pairs, root = [], os.path.abspath(root)
    for line in tsv.read_text(encoding="utf-8").splitlines():
        cols = line.rstrip("\r").split("\t")
        if not line.strip():
            continue
        try:
            frames = json.loads(cols[1])
        except ValueError:
            frames = ast.literal_eval(cols[1])
        pairs.append(TrainPair(cols[0], [os.path.join(root, f) for f in frames], cols[3], os.path.join(root, cols[4])))
    return pairs


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def test_store_items_equal_the_parsed_lines_release_layout(tmp_path):
    tsv = _write(tmp_path / "data" / "annotations" / "training_videoinfo_46.txt", _release_lines())
    expected = _expected(tsv, tmp_path / "data")
    store = load_lpr4m_train(tmp_path / "data")
    assert not isinstance(store, list) and len(store) == len(expected) == 46
    assert [store[i] for i in range(len(store))] == expected
    assert list(store) == expected and store[-1] == expected[-1] and store[2:5] == expected[2:5]
    with pytest.raises(IndexError):
        store[len(store)]
    assert store.meta["fallback_pairs"] >= 4          # the unstructured clips went to the string table
    mmap = open_train_store(tsv, tmp_path / "data", mode="mmap")
    assert [mmap[i] for i in range(len(mmap))] == expected
    assert [pickle.loads(pickle.dumps(store))[i] for i in range(len(store))] == expected


def _index_tsv(path: Path, entries: dict[str, tuple[int, str]], roots: list[Path]) -> Path:
    lines = [f"#root\t{k}\t{r}" for k, r in enumerate(roots)]
    lines += [f"{key}\t{root}\t{rel}" for key, (root, rel) in entries.items()]
    return _write(path, lines)


def _original_layout(tmp_path: Path):
    """Frame ids + image ids, an index that lacks some of them; the expected pairs."""
    roots = [tmp_path / "frames", tmp_path / "images"]
    entries, lines, expected = {}, [], []
    for k in range(25):
        clip = CLIP.format(k * 1000, k * 1000 + 900)
        image = IMAGE.format(k)
        frames = [f"{clip}-{j:04d}" for j in range(1 + k % 6)]
        if k % 4 == 1:
            frames = [f"{clip}_{j}" for j in range(3)]          # ids without the -NNNN form
        for j, f in enumerate(frames):
            if (k + j) % 5 != 3 and k % 9 != 8:                  # some frames, and all of some clips, missing
                entries[f] = (0, f"{k:05d}/{k:05d}{j:04d}.jpg")
        if k % 7 != 6:                                           # some images missing
            entries[image] = (1, f"{k // 10:05d}/{k:09d}.jpg")
        lines.append(f"{clip}\t{json.dumps(frames)}\t[]\t{image}\ttitle\t0\tcat\tasr\t1\t1\t1")
        paths = [os.path.join(roots[0], entries[f][1]) for f in frames if f in entries]
        if paths and image in entries:
            expected.append(TrainPair(clip, paths, image, os.path.join(roots[1], entries[image][1])))
    entries["dup-0001"] = (0, "first.jpg")
    index = _index_tsv(tmp_path / "index.tsv", entries, roots)
    with open(index, "a") as f:
        f.write("dup-0001\t1\tsecond.jpg\n")                     # a repeated id: the last line wins, as in a dict
    entries["dup-0001"] = (1, "second.jpg")
    tsv = _write(tmp_path / "ann" / "training_videoinfo_full_25.txt", lines)
    return tsv, index, entries, roots, expected


def test_original_layout_resolves_ids_through_the_index_store(tmp_path, monkeypatch):
    monkeypatch.setattr(img2dataset_index, "_BLOCK", 300)   # many blocks and batches: their seams are exercised
    monkeypatch.setattr(img2dataset_index, "_BATCH", 3)
    tsv, index_tsv, entries, roots, expected = _original_layout(tmp_path)
    index = open_img2dataset_index(index_tsv)
    assert len(index) == len(entries)
    assert {key: index[key] for key in entries} == {key: os.path.join(roots[r], rel)
                                                    for key, (r, rel) in entries.items()}
    assert "missing-0001" not in index and index.get("missing", "") == "" and set(index) == set(entries)
    store = load_lpr4m_train(tmp_path / "ann", index=index_tsv)
    assert 0 < len(store) < 25 and store.dropped == 25 - len(store)
    assert list(store) == expected
    assert list(pickle.loads(pickle.dumps(store))) == expected


@pytest.mark.parametrize("bad, message", [
    ("clip\t['a.jpg'\tbox\timg\tpath", r"training_videoinfo_9\.txt:4: column 1 is not a list literal"),
    ("clip\t['a.jpg']\tbox", r"training_videoinfo_9\.txt:4: expected at least 5 tab-separated columns"),
    ("clip\t[1, 2]\tbox\timg\tpath", r"training_videoinfo_9\.txt:4: column 1 must be a list of strings"),
    ("clip\t__import__('os')\tbox\timg\tpath", r"training_videoinfo_9\.txt:4: column 1 is not a list literal"),
    ("\t['a.jpg']\tbox\timg\tpath", r"training_videoinfo_9\.txt:4: empty clip id or image id"),
])
def test_malformed_line_names_file_and_line_and_leaves_no_store(tmp_path, bad, message):
    lines = _release_lines()[:2] + [""] + [bad] + _release_lines()[2:5]
    tsv = _write(tmp_path / "annotations" / "training_videoinfo_9.txt", lines)
    with pytest.raises(DataError, match=message):
        load_lpr4m_train(tmp_path)
    assert [p.name for p in tsv.parent.iterdir() if "store" in p.name and not p.name.endswith(".lock")] == []


def test_store_is_rebuilt_when_the_tsv_changes_and_leftovers_are_ignored(tmp_path):
    lines = _release_lines()
    tsv = _write(tmp_path / "annotations" / "training_videoinfo_1.txt", lines[:10])
    first = load_lpr4m_train(tmp_path)
    folder = first.folder
    assert folder == tsv.parent / ".training_videoinfo_1.txt.store" and len(first) == 10
    again = load_lpr4m_train(tmp_path)
    assert again.meta == first.meta                  # reused, not rebuilt
    # a killed build left a half-written folder; a store folder without meta.json is not a store
    leftover = tsv.parent / ".training_videoinfo_1.txt.store.tmp-99999-deadbeef"
    leftover.mkdir()
    (leftover / "clips.npy").write_bytes(b"half")
    _write(tsv, lines[:20])                          # the TSV changes: rebuilt, the leftover removed
    changed = load_lpr4m_train(tmp_path)
    assert len(changed) == 20 and list(changed) == _expected(tsv, tmp_path)
    assert not leftover.exists() and changed.meta["key"] != first.meta["key"]
    assert [first[i] for i in range(10)] == _expected(tsv, tmp_path)[:10]   # open readers keep their files
    (changed.folder / "meta.json").unlink()          # no meta: not a store, built again
    assert list(load_lpr4m_train(tmp_path)) == _expected(tsv, tmp_path)


def test_read_only_data_folder_uses_the_cache_folder(tmp_path, monkeypatch):
    tsv = _write(tmp_path / "ro" / "annotations" / "training_videoinfo_3.txt", _release_lines()[:3])
    monkeypatch.setenv("RICE_CACHE_DIR", str(tmp_path / "cache"))
    writable = os.access          # the tests run as root, who may write anywhere: pretend the folder is read-only
    monkeypatch.setattr(os, "access", lambda path, mode: writable(path, mode) and Path(path) != tsv.parent)
    store = load_lpr4m_train(tmp_path / "ro")
    assert store.folder.parent == tmp_path / "cache" and list(store) == _expected(tsv, tmp_path / "ro")
    assert not any(p.name.startswith(".") for p in tsv.parent.iterdir())


def test_cache_folder_when_given(tmp_path):
    tsv = _write(tmp_path / "annotations" / "training_videoinfo_3.txt", _release_lines()[:3])
    store = open_train_store(tsv, tmp_path, cache_dir=tmp_path / "cache")
    assert store.folder.parent == tmp_path / "cache" and list(store) == _expected(tsv, tmp_path)


def _open_in_child(args):
    tsv, root = args
    store = open_train_store(Path(tsv), root)
    return store.meta["built_by"], [store[i] for i in range(len(store))]


def test_ranks_starting_at_once_build_once(tmp_path):
    tsv = _write(tmp_path / "annotations" / "training_videoinfo_2000.txt",
                 _release_lines()[:30] * 70)              # big enough that the builds would overlap
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_open_in_child, [(str(tsv), str(tmp_path))] * 3)
    builders = {built_by for built_by, _ in results}
    assert len(builders) == 1 and all(items == _expected(tsv, tmp_path) for _, items in results)


class _Frames(torch.utils.data.Dataset):
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        pair = self.pairs[i]
        return i, pair.clip_id, pair.frame_paths, pair.image_path


def test_dataloader_with_two_workers_reads_the_store(tmp_path):
    tsv = _write(tmp_path / "annotations" / "training_videoinfo_46.txt", _release_lines())
    store = load_lpr4m_train(tmp_path)
    loader = torch.utils.data.DataLoader(_Frames(store), batch_size=5, num_workers=2, collate_fn=list)
    items = sorted(item for batch in loader for item in batch)
    assert [(c, f, p) for _, c, f, p in items] == [(p.clip_id, p.frame_paths, p.image_path)
                                                   for p in _expected(tsv, tmp_path)]


@pytest.mark.parametrize("bad, message", [
    ("id-0001\t7\tx.jpg", r"index\.tsv:3: unknown root number '7'"),
    ("id-0001\t0", r"index\.tsv:3: expected 3 tab-separated fields, got 2"),
    ("", r"index\.tsv:3: expected 3 tab-separated fields, got 1"),
])
def test_malformed_index_line_names_file_and_line(tmp_path, bad, message):
    index = _write(tmp_path / "index.tsv", [f"#root\t0\t{tmp_path}", "a-0001\t0\ta.jpg", bad, "b\t0\tb.jpg"])
    with pytest.raises(DataError, match=message):
        open_img2dataset_index(index)
    with pytest.raises(DataError, match="index .*nope.tsv not found"):
        open_img2dataset_index(tmp_path / "nope.tsv")
