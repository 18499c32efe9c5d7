"""Plain records shared by every dataset loader.

Loaders turn annotation files into these records (absolute paths, no I/O on the
images themselves); the torch datasets in `dataloaders.datasets` read them.
"""
from dataclasses import dataclass

from utils.errors import DataError


@dataclass
class TrainPair:
    """One training sample: a clip (its frames in time order) and its shop image."""
    clip_id: str
    frame_paths: list[str]   # absolute paths, all frames of the clip (sampling happens later)
    image_id: str
    image_path: str          # absolute path


@dataclass
class Query:
    """One evaluation query clip with its ground-truth image ids."""
    query_id: str
    frame_paths: list[str]   # absolute paths; may be empty (counted as a miss at eval)
    gt: list[str]            # ground-truth image ids
    group: str               # live_id for LPR4M (per-livestream gallery), "" for a global gallery


@dataclass
class GalleryImage:
    image_id: str
    path: str                # absolute path ("" when the file is known to be missing)
    group: str               # live_id for LPR4M, "" for a global gallery


@dataclass
class RetrievalSplit:
    queries: list[Query]
    gallery: list[GalleryImage]
    per_group: bool          # True: rank each query only against gallery images of its group


def live_id_of(clip_id: str) -> str:
    """The livestream id of an LPR4M clip id: its first 5 dash-separated fields (a UUID).

    >>> live_id_of("8f3c1a2b-0d4e-4f6a-9b7c-1d2e3f4a5b6c-120000-135000")
    '8f3c1a2b-0d4e-4f6a-9b7c-1d2e3f4a5b6c'
    """
    fields = clip_id.split("-")
    if len(fields) < 5:
        raise DataError(f"clip id {clip_id!r} does not start with a live_id UUID (5 dash-separated fields)")
    return "-".join(fields[:5])
