"""MovingFashion (docs/data.md): 1-fps frame extraction and the train / test loaders.

Release layout: videos/*.mp4, imgs/*.jpg, train.json and test.json, each
{key: {"img_path": ..., "source": ..., "video_paths": [...]}} (test: one video per key).

`prepare_movingfashion(root)` decodes every listed video with PyAV (in-process) and keeps one
frame per second (the first frame at or after t = 0 s, 1 s, 2 s, ...) as
    frames/<video stem>/<video stem>-NNNN.jpg
Each finished video gets frames/<video stem>/frames.json (written last, atomically); a rerun
skips videos that have it, so an interrupted run resumes. Finally it writes
annotations/video_frames.json: {video path as listed: [frame paths relative to root]}, the
file the loaders read together with train.json / test.json.
"""
import json
import logging
import os
from pathlib import Path

from tqdm import tqdm

from utils.errors import DataError

from .records import GalleryImage, Query, RetrievalSplit, TrainPair

logger = logging.getLogger(__name__)
FRAMES_INDEX = "annotations/video_frames.json"


def _read_split(root: Path, name: str) -> dict:
    path = root / name
    if not path.is_file():
        raise DataError(f"MovingFashion split file {path} not found (expected the release layout: "
                        f"videos/, imgs/, train.json, test.json under {root})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    for key, entry in data.items():
        if not isinstance(entry, dict) or "img_path" not in entry or not isinstance(entry.get("video_paths"), list):
            raise DataError(f"{path}: entry {key!r} needs 'img_path' and a 'video_paths' list")
    if not data:
        raise DataError(f"{path} lists no products")
    return data


def extract_frames_1fps(video_path: Path, out_dir: Path, stem: str) -> list[str]:
    """Decode one video, save one JPEG per second into out_dir; return the file names."""
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    names, next_t = [], 0.0
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else float(frame.pts * stream.time_base)
            if t + 1e-6 < next_t:
                continue
            name = f"{stem}-{len(names):04d}.jpg"
            frame.to_image().save(out_dir / name, quality=95)
            names.append(name)
            next_t += 1.0
            while next_t <= t:     # a gap in the stream: don't emit catch-up frames
                next_t += 1.0
    return names


def prepare_movingfashion(root, progress: bool = True) -> dict:
    """Extract 1-fps frames of every video in train.json / test.json; resumable.

    Returns {"extracted": videos decoded now, "skipped": videos already done, "failed": [paths]}.
    A video that cannot be decoded is reported in "failed" and gets no frames (the loaders then
    skip it for training and count it as a missed query at test).
    """
    import av  # only the preparation decodes video; the loaders stay light

    root = Path(root)
    videos = sorted({v for split in ("train.json", "test.json")
                     for entry in _read_split(root, split).values() for v in entry["video_paths"]})
    result = {"extracted": 0, "skipped": 0, "failed": []}
    frames_index = {}
    for video in tqdm(videos, desc="MovingFashion 1-fps frames", disable=not progress):
        stem = Path(video).stem
        out_dir = root / "frames" / stem
        done = out_dir / "frames.json"
        if done.is_file():
            names = json.loads(done.read_text())
            result["skipped"] += 1
        else:
            try:
                names = extract_frames_1fps(root / video, out_dir, stem)
            except (OSError, av.FFmpegError, ValueError) as e:
                logger.warning("cannot decode %s: %s", root / video, e)
                result["failed"].append(str(root / video))
                continue
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(names))
            os.replace(tmp, done)
            result["extracted"] += 1
        frames_index[video] = [f"frames/{stem}/{n}" for n in names]
    (root / "annotations").mkdir(exist_ok=True)
    tmp = root / (FRAMES_INDEX + ".tmp")
    tmp.write_text(json.dumps(frames_index, indent=0))
    os.replace(tmp, root / FRAMES_INDEX)
    return result


def _frames_index(root: Path) -> dict:
    path = root / FRAMES_INDEX
    if not path.is_file():
        raise DataError(f"{path} not found: extract the frames first with "
                        f"`python tools/prepare_movingfashion.py --root {root}`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_movingfashion_train(root) -> list[TrainPair]:
    """One pair per training video: (its 1-fps frames, the product's shop image)."""
    root = Path(root).resolve()
    data = _read_split(root, "train.json")
    frames, pairs, no_frames = _frames_index(root), [], 0
    for key, entry in data.items():
        for video in entry["video_paths"]:
            paths = [str(root / p) for p in frames.get(video, [])]
            if not paths:
                no_frames += 1
                continue
            pairs.append(TrainPair(Path(video).stem, paths, key, str(root / entry["img_path"])))
    if no_frames:
        logger.warning("MovingFashion train: %d videos have no extracted frames and are skipped", no_frames)
    if not pairs:
        raise DataError(f"no MovingFashion training pairs with frames under {root}")
    return pairs


def load_movingfashion_test(root) -> RetrievalSplit:
    """Queries (one per test video) against ONE global gallery of all test shop images.

    Gallery image ids are unique: keys sharing the same img_path share one gallery entry
    (the first key), so a duplicated image cannot take several top-k slots.
    """
    root = Path(root).resolve()
    data = _read_split(root, "test.json")
    frames = _frames_index(root)
    id_of_image: dict[str, str] = {}
    gallery, queries = [], []
    for key, entry in data.items():
        if entry["img_path"] not in id_of_image:
            id_of_image[entry["img_path"]] = key
            gallery.append(GalleryImage(key, str(root / entry["img_path"]), ""))
        for video in entry["video_paths"]:
            paths = [str(root / p) for p in frames.get(video, [])]
            queries.append(Query(Path(video).stem, paths, [id_of_image[entry["img_path"]]], ""))
    return RetrievalSplit(queries, gallery, per_group=False)
