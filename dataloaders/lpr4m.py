"""LPR4M / LPR750K annotation loaders (docs/data.md).

Two layouts are supported:
  release  (LPR750K download): frame and image paths are written in the annotation files,
           relative to data_root (training) or to data_root/query, data_root/gallery (test);
  original (full LPR4M, files fetched with img2dataset): annotations hold frame ids and
           image ids, resolved to files through an index (`dataloaders.img2dataset_index`).
           Pass `index=` (a dict id -> path, or the path of the TSV index) to use it.
Training and validation pairs come back as an annotation store (`dataloaders.annotations`):
a `Sequence[TrainPair]` over columns on disk, parsed once and cached beside the TSV.
Annotation files are looked up in data_root/annotations, then in data_root, by pattern;
every file name can be overridden by an argument.
"""
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from utils.errors import DataError

from .annotations import _parse_list, open_train_store, split_columns
from .img2dataset_index import Img2DatasetIndex, open_img2dataset_index
from .records import GalleryImage, Query, RetrievalSplit, TrainPair, live_id_of

logger = logging.getLogger(__name__)


def find_annotation(data_root, pattern: str, what: str, exclude=()) -> Path:
    """The single file matching `pattern` in data_root/annotations or data_root."""
    root = Path(data_root)
    for folder in (root / "annotations", root):
        matches = sorted(p for p in folder.glob(pattern)
                         if p.is_file() and not any(x in p.name for x in exclude))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DataError(f"several {what} files match {pattern!r} in {folder}: "
                            f"{[m.name for m in matches]}; pass the one to use explicitly")
    if not root.is_dir():
        raise DataError(f"data_root {root} does not exist: pass the folder that holds annotations/ "
                        "(see README, Preparing data)")
    raise DataError(f"no {what} file matching {pattern!r} in {root / 'annotations'} or {root}")


def _resolve_file(data_root, given, pattern: str, what: str, exclude=()) -> Path:
    if given is None:
        return find_annotation(data_root, pattern, what, exclude)
    path = Path(given)
    if not path.is_absolute() and not path.exists():
        for folder in (Path(data_root) / "annotations", Path(data_root)):
            if (folder / path).exists():
                path = folder / path
                break
    if not path.is_file():
        raise DataError(f"{what} file {given} not found (also looked in {data_root}/annotations)")
    return path


def _as_index(index) -> Mapping[str, str] | None:
    """None, a mapping as given (a dict), or the columnar store of the TSV index at that path."""
    if index is None or isinstance(index, Mapping):
        return index
    return open_img2dataset_index(index)


def read_training_tsv(path: Path) -> list[tuple[str, list[str], str, str]]:
    """Rows (clip_id, frames, image_id, column 4) of a training TSV; malformed lines raise."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = split_columns(line, path, lineno)
            frames = _parse_list(cols[1], path, lineno)
            if not cols[0] or not cols[3]:
                raise DataError(f"{path}:{lineno}: empty clip id or image id")
            rows.append((cols[0], frames, cols[3], cols[4]))
    return rows


def load_lpr4m_train(data_root, split: str = "train", annotation=None, index=None) -> Sequence[TrainPair]:
    """Training ("train") or validation ("val") pairs.

    Returns the annotation store of the TSV (`dataloaders.annotations.TrainPairStore`,
    built on first use, cached beside the file), or a list when `index` is a dict (an
    in-memory index: small data). Either way item i is the pair of line i.

    release layout: column 1 lists frame paths and column 4 the image path, relative to
    data_root. original layout (index given): column 1 lists frame ids and column 3 the image
    id, looked up in the index; unindexed frames are dropped and pairs left without frames or
    image are skipped (counted in a log line).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if split == "train":
        path = _resolve_file(data_root, annotation, "training_videoinfo_*.txt", "training annotation",
                             exclude=("_val",))
    else:
        path = _resolve_file(data_root, annotation, "training_videoinfo_val*.txt", "validation annotation")
    index = _as_index(index)
    if index is None or isinstance(index, Img2DatasetIndex):
        store = open_train_store(path, data_root, index)
        if store.dropped:
            logger.warning("%s: %d pairs skipped: image or all frames missing from the index", path, store.dropped)
        if not len(store):
            raise DataError(f"no {split} pairs in {path}" + (" after the index lookup" if store.dropped else ""))
        return store
    root = os.path.abspath(data_root)
    pairs, dropped = [], 0
    for clip_id, frames, image_id, image_rel in read_training_tsv(path):
        if index is None:
            pairs.append(TrainPair(clip_id, [os.path.join(root, p) for p in frames], image_id,
                                   os.path.join(root, image_rel)))
            continue
        frame_paths = [index[f] for f in frames if f in index]
        if not frame_paths or image_id not in index:
            dropped += 1
            continue
        pairs.append(TrainPair(clip_id, frame_paths, image_id, index[image_id]))
    if dropped:
        logger.warning("%s: %d pairs skipped: image or all frames missing from the index", path, dropped)
    if not pairs:
        raise DataError(f"no {split} pairs in {path}" + (" after the index lookup" if dropped else ""))
    return pairs


def load_lpr4m_validation(data_root, index=None, max_queries: int | None = None) -> RetrievalSplit:
    """The validation pairs as a retrieval split with the test set's per-livestream protocol.

    The release ships `training_videoinfo_val.txt`, pairs in the training
    format: each pair's clip becomes a query whose ground truth is its image,
    and the distinct images of each livestream form that livestream's gallery.
    `max_queries` keeps the first N clips (file order); the galleries of their
    livestreams stay whole, so R@k keeps its meaning.
    """
    pairs = load_lpr4m_train(data_root, "val", index=index)
    gallery: dict[tuple[str, str], GalleryImage] = {}
    queries = []
    for pair in pairs:
        live = live_id_of(pair.clip_id)
        gallery.setdefault((live, pair.image_id), GalleryImage(pair.image_id, pair.image_path, live))
        queries.append(Query(pair.clip_id, pair.frame_paths, [pair.image_id], live))
    if max_queries is not None:
        queries = queries[:max_queries]
        lives = {q.group for q in queries}
        gallery = {key: image for key, image in gallery.items() if key[0] in lives}
    return RetrievalSplit(queries=queries, gallery=list(gallery.values()), per_group=True)


def _query_frame_path(root: str, clip_id: str, entry: str) -> str:
    """Release query frame entry -> absolute path (entries are relative to data_root/query)."""
    if not entry.lower().endswith((".jpg", ".jpeg", ".png")):
        entry += ".jpg"
    if "/" not in entry:
        entry = f"{clip_id}/{entry}"
    return os.path.join(root, "query", entry)


def _split_gallery_entry(entry: str) -> tuple[str, str]:
    """'live_id/<image_id>-0.jpg' -> (live_id, image_id)."""
    group, _, name = entry.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    head, _, k = stem.rpartition("-")
    image_id = head if head and k.isdigit() and len(k) <= 3 else stem   # a UUID tail is 12 chars
    return group, image_id


def load_lpr4m_test(data_root, query_file=None, gallery_file=None, gt_file=None,
                    frames_file=None, index=None) -> RetrievalSplit:
    """Test queries and per-livestream galleries.

    release layout: query_tenframes.json ({clip_id: {"frames": [...], "gt": [...]}}),
    gallery_main.txt ("live_id/<image_id>-0.jpg" per line), ground truth from
    test_videoid_to_gtimage*.json when present, else the "gt" field.
    original layout (index given): queries from test_videoid_to_gtimage*.json, their frames
    from the frame ids of test_frameid2gtbox*.json, galleries from test_liveid_to_gallery*.json.
    """
    index = _as_index(index)
    root = os.path.abspath(data_root)
    if index is not None:
        return _load_original_test(data_root, gt_file, frames_file, gallery_file, index)
    qpath = _resolve_file(data_root, query_file, "query_tenframes*.json", "test query")
    gpath = _resolve_file(data_root, gallery_file, "gallery_main*.txt", "gallery")
    raw = _read_json(qpath)
    gt_map, gt_path = None, None   # the gt file wins over the "gt" field when it exists
    gt_files = [p for d in ("annotations", ".") for p in (Path(data_root) / d).glob("test_videoid_to_gtimage*.json")]
    if gt_file is not None or gt_files:
        gt_path = _resolve_file(data_root, gt_file, "test_videoid_to_gtimage*.json", "ground truth")
        gt_map = _read_json(gt_path)
    queries = []
    for clip_id, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list):
            raise DataError(f"{qpath}: entry {clip_id!r} must be an object with a 'frames' list")
        gt = gt_map.get(clip_id) if gt_map is not None else entry.get("gt")
        if not gt:
            raise DataError(f"{qpath}: query {clip_id!r} has no ground truth (looked in "
                            f"{'the gt file' if gt_map is not None else 'its gt field'})")
        gt = _id_list(gt, gt_path if gt_map is not None else qpath, clip_id, "the ground truth")
        frames = [_query_frame_path(root, clip_id, f) for f in _id_list(entry["frames"], qpath, clip_id, "frames")]
        queries.append(Query(clip_id, frames, list(gt), live_id_of(clip_id)))
    gallery = []
    with open(gpath, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            entry = line.strip()
            if not entry:
                continue
            group, image_id = _split_gallery_entry(entry)
            if not group:
                raise DataError(f"{gpath}:{lineno}: expected 'live_id/<image_id>-0.jpg', got {entry!r}")
            gallery.append(GalleryImage(image_id, os.path.join(root, "gallery", entry), group))
    return _checked(RetrievalSplit(queries, gallery, per_group=True), qpath, gpath)


def _read_json(path: Path, shape: type | tuple[type, ...] = dict):
    """The JSON value in `path`, whose top level must be of `shape` (a DataError names the file otherwise)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, shape):
        wanted = " or ".join(_JSON_NAMES[t] for t in (shape if isinstance(shape, tuple) else (shape,)))
        found = _JSON_NAMES.get(type(value), type(value).__name__)
        raise DataError(f"{path}: expected a JSON {wanted} at the top level, found {found}: "
                        f"{json.dumps(value)[:80]}")
    return value


_JSON_NAMES = {dict: "object {...}", list: "array [...]", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def _id_list(value, path: Path, clip_id: str, what: str) -> list[str]:
    """A list of ids from a JSON file, checked (a DataError names the file and the clip otherwise)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: {what} of {clip_id!r} must be a list of ids (strings), got "
                        f"{json.dumps(value)[:80]}")
    return value


def _load_original_test(data_root, gt_file, frames_file, gallery_file, index) -> RetrievalSplit:
    gt_path = _resolve_file(data_root, gt_file, "test_videoid_to_gtimage*.json", "ground truth")
    fr_path = _resolve_file(data_root, frames_file, "test_frameid2gtbox*.json", "test frame list")
    ga_path = _resolve_file(data_root, gallery_file, "test_liveid_to_gallery*.json", "gallery")
    frames_of = defaultdict(list)
    for frame_id in _read_json(fr_path, (dict, list)):
        frames_of[frame_id.rsplit("-", 1)[0]].append(frame_id)
    queries, missing = [], 0
    for clip_id, gt in _read_json(gt_path).items():
        gt = _id_list(gt, gt_path, clip_id, "the ground truth")
        frame_ids = sorted(frames_of.get(clip_id, []))
        paths = [index[f] for f in frame_ids if f in index]
        missing += len(frame_ids) - len(paths)
        queries.append(Query(clip_id, paths, list(gt), live_id_of(clip_id)))
    gallery, missing_images = [], 0
    for live_id, image_ids in _read_json(ga_path).items():
        for image_id in _id_list(image_ids, ga_path, live_id, "the gallery"):
            missing_images += image_id not in index
            gallery.append(GalleryImage(image_id, index.get(image_id, ""), live_id))
    if missing or missing_images:
        logger.warning("LPR4M test: %d query frames and %d gallery images are not in the index",
                       missing, missing_images)
    return _checked(RetrievalSplit(queries, gallery, per_group=True), gt_path, ga_path)


def _checked(split: RetrievalSplit, qpath, gpath) -> RetrievalSplit:
    if not split.queries:
        raise DataError(f"no test queries in {qpath}")
    if not split.gallery:
        raise DataError(f"no gallery images in {gpath}")
    return split
