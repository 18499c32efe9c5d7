"""The annotation store: a training/validation TSV parsed once into columns on disk.

`open_train_store(tsv, data_root, index)` returns a `TrainPairStore`, a `Sequence[TrainPair]`
whose `store[i]` is the pair of the i-th non-blank line, exactly as the list parser
(`dataloaders.lpr4m.read_training_tsv` + `load_lpr4m_train`) gives it, built on demand.
Nothing per frame lives in Python memory: the store is a folder of `.npy` columns read with
pread (`dataloaders.columnar`), shared by every rank and DataLoader worker through the page
cache, built once (cached beside the TSV as `.<tsv>.store/`, rebuilt when the TSV changes).

Columns (docs/data.md, "Annotation store"):
  clips.npy     one record per pair + an end record: offsets into strings.npy and frames.npy,
                the lengths of the pair's five strings, the frame number width, the image's
                index row (original layout);
  strings.npy   per pair, back to back: clip id, image id, image path, frame prefix, frame suffix;
  frames.npy    uint32 per frame (CSR by frame_off): release layout, the frame number when
                every frame path of the clip is prefix + zero-padded number of `width` digits +
                suffix (`training_video_01/<clip>/<clip>-0003.jpg`), else a row of the
                fallback string table; original layout, the frame's row in the img2dataset index;
  fallback_blob.npy, fallback_off.npy   frame paths of clips without that structure.
Frame lists are parsed without a Python object per frame when they are written in the plain
form (`['a', 'b']` or `["a", "b"]`, no backslash); other forms go through the list parser.
"""
import ast
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.errors import DataError

from .columnar import Column, NpyWriter, cached_store, fingerprint, gather_bytes, store_location
from .img2dataset_index import Img2DatasetIndex, split_id
from .records import TrainPair

logger = logging.getLogger(__name__)

FORMAT = 1
_FLUSH = 4096                 # pairs buffered before the vectorised work and the writes
_MAX_WIDTH = 9                # frame numbers are uint32
STRINGS = ("clip_id", "image_id", "image_path", "prefix", "suffix")
CLIP_DTYPE = np.dtype([("str_off", "<i8"), ("frame_off", "<i8"), ("image_row", "<i8"), ("width", "i1")]
                      + [(f"len_{name}", "<i4") for name in STRINGS])
_FALLBACK, _EMPTY = -1, 0     # width codes besides 1.._MAX_WIDTH


def split_columns(line: str, path, lineno: int) -> list[str]:
    """The tab-separated columns of a training TSV line (at least 5; a DataError names file:line)."""
    cols = line.split("\t")
    if len(cols) < 5:
        raise DataError(f"{path}:{lineno}: expected at least 5 tab-separated columns "
                        f"(clip id, frames, boxes, image id, image path), got {len(cols)}")
    return cols


def _parse_list(text: str, path: Path, lineno: int) -> list[str]:
    """A JSON or Python list literal of strings (never eval)."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DataError(f"{path}:{lineno}: column 1 is not a list literal: {text[:80]!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}:{lineno}: column 1 must be a list of strings, got {text[:80]!r}")
    return value


def plain_list_items(column: bytes):
    """(bytes array, starts, ends) of the items of a list literal in the plain form, else None.

    Plain form: `[` items `]`, each item quoted with the same quote (' or "), no backslash,
    no control character, items separated by exactly one comma and spaces (checked on all
    gaps at once when they are all alike, as they are in the release files). There JSON and
    Python literals mean the same thing: each item is the text between its quotes.
    """
    if len(column) < 2 or column[0] != 0x5B or column[-1] != 0x5D or b"\\" in column:
        return None
    a = np.frombuffer(column, np.uint8)[1:-1]
    if (a < 0x20).any():
        return None
    body = column[1:-1].lstrip(b" ")
    empty = np.zeros(0, np.int64)
    if not body:
        return a, empty, empty
    quote = body[0]
    if quote not in (0x22, 0x27):
        return None
    pos = np.flatnonzero(a == quote)
    if len(pos) % 2:
        return None
    opens, closes = pos[0::2], pos[1::2]
    if a[: opens[0]].tobytes().strip(b" ") or a[closes[-1] + 1:].tobytes().strip(b" "):
        return None
    if len(opens) > 1:
        gap = opens[1:] - closes[:-1] - 1
        first = a[closes[0] + 1:opens[1]].tobytes()
        uniform = (gap == len(first)).all() and not (
            a[closes[:-1, None] + 1 + np.arange(len(first))] != np.frombuffer(first, np.uint8)).any()
        gaps = [first] if uniform else [a[closes[k] + 1:opens[k + 1]].tobytes() for k in range(len(gap))]
        if any(g.count(b",") != 1 or g.strip(b" ,") for g in gaps):
            return None
    return a, opens + 1, closes


def numbered_frames(a: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """(prefix, suffix, width, numbers) when every item is prefix + `width` digits + suffix, else None.

    The digits are the one run of digits that holds every column where items differ (for a
    single item or identical items: the last run of digits).
    """
    length = int(ends[0] - starts[0])
    if (ends - starts != length).any() or length == 0:
        return None
    grid = a[starts[:, None] + np.arange(length)]
    first = grid[0]
    digit = (first >= 0x30) & (first <= 0x39)
    differ = np.flatnonzero((grid != first).any(0))
    if len(differ):
        lo, hi = int(differ[0]), int(differ[-1]) + 1
    else:
        runs = np.flatnonzero(digit)
        if not len(runs):
            return None
        lo = hi = int(runs[-1]) + 1
        lo -= 1
    left = np.flatnonzero(~digit[:lo])
    lo = int(left[-1]) + 1 if len(left) else 0
    right = np.flatnonzero(~digit[hi:])
    hi = hi + int(right[0]) if len(right) else length
    width = hi - lo
    if not 1 <= width <= _MAX_WIDTH:
        return None
    digits = grid[:, lo:hi].astype(np.int64) - 0x30
    if ((digits < 0) | (digits > 9)).any():
        return None
    numbers = digits @ (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))
    return first[:lo].tobytes(), first[hi:].tobytes(), width, numbers


class _Writer:
    """Streams parsed pairs into the columns (`add` per pair, `close` at the end)."""

    def __init__(self, out: Path, path: Path, index: Img2DatasetIndex | None):
        self.path, self.index = path, index
        self.clips = NpyWriter(out / "clips.npy", CLIP_DTYPE)
        self.strings = NpyWriter(out / "strings.npy", np.uint8)
        self.frames = NpyWriter(out / "frames.npy", np.uint32)
        self.fb_blob = NpyWriter(out / "fallback_blob.npy", np.uint8)
        self.fb_off = NpyWriter(out / "fallback_off.npy", np.int64)
        self.fb_off.append([0])
        self.str_total = self.frame_total = self.fb_bytes = self.fb_rows = 0
        self.pending: list[tuple] = []
        self.pairs = self.dropped = self.fallback_pairs = 0

    def add(self, clip_id: bytes, image_id: bytes, image_path: bytes, frames) -> None:
        """frames: (prefix, suffix, width, numbers) or list[bytes] (any other form)."""
        self.pending.append((clip_id, image_id, image_path, frames))
        if len(self.pending) >= _FLUSH:
            self.flush()

    def _fallback(self, items: list[bytes]) -> np.ndarray:
        """Append frame strings to the fallback table; their rows."""
        blob = b"".join(items)
        self.fb_blob.append_bytes(blob)
        self.fb_off.append(self.fb_bytes + np.cumsum([len(i) for i in items], dtype=np.int64))
        self.fb_bytes += len(blob)
        rows = np.arange(self.fb_rows, self.fb_rows + len(items), dtype=np.int64)
        self.fb_rows += len(items)
        self.fallback_pairs += 1
        return rows

    def _resolve(self) -> list[tuple[np.ndarray, int] | None]:
        """Original layout: (frame rows found, image row) per pending pair, None when dropped."""
        prefixes, numbers, counts, spans = [], [], [], []
        for clip_id, image_id, _, frames in self.pending:
            begin = len(prefixes)
            if isinstance(frames, tuple) and frames[2] == 4 and frames[1] == b"" and frames[0].endswith(b"-"):
                prefixes.append(frames[0][:-1])            # '<clip_id>-NNNN': one group for the clip
                numbers.append(frames[3])
                counts.append(len(frames[3]))
            else:
                if isinstance(frames, tuple):
                    prefix, suffix, width, nums = frames
                    frames = [b"%s%0*d%s" % (prefix, width, n, suffix) for n in nums.tolist()]
                for key in frames:                          # any other form: one lookup per id
                    p, n = split_id(key)
                    prefixes.append(p)
                    numbers.append(np.array([n]))
                    counts.append(1)
            p, n = split_id(image_id)
            prefixes.append(p)
            numbers.append(np.array([n]))
            counts.append(1)
            spans.append(len(prefixes) - begin)
        rows = self.index.lookup(prefixes, np.concatenate(numbers) if numbers else np.zeros(0, np.int64),
                                 np.array(counts, np.int64))
        out, at = [], 0
        group_end = np.cumsum(counts)
        group = 0
        for span in spans:
            stop = int(group_end[group + span - 1])
            frame_rows, image_row = rows[at:stop - 1], int(rows[stop - 1])
            frame_rows = frame_rows[frame_rows >= 0]
            out.append((frame_rows, image_row) if len(frame_rows) and image_row >= 0 else None)
            at, group = stop, group + span
        return out

    def flush(self) -> None:
        if not self.pending:
            return
        resolved = self._resolve() if self.index is not None else [None] * len(self.pending)
        records, strings, frames = [], [], []
        for (clip_id, image_id, image_path, parsed), found in zip(self.pending, resolved):
            image_row, prefix, suffix = -1, b"", b""
            if self.index is not None:
                if found is None:
                    self.dropped += 1
                    continue
                values, image_row = found
                width, image_path = _EMPTY, b""
            elif isinstance(parsed, tuple):
                prefix, suffix, width, values = parsed
            elif parsed:
                values, width = self._fallback(parsed), _FALLBACK
            else:
                values, width = np.zeros(0, np.int64), _EMPTY
            parts = (clip_id, image_id, image_path, prefix, suffix)
            records.append((self.str_total, self.frame_total, image_row, width, *map(len, parts)))
            strings.append(b"".join(parts))
            self.str_total += len(strings[-1])
            frames.append(values)
            self.frame_total += len(values)
        if records:
            self.clips.append(np.array(records, dtype=CLIP_DTYPE))
            self.strings.append_bytes(b"".join(strings))
            self.frames.append(np.concatenate(frames))
            self.pairs += len(records)
        self.pending = []

    def close(self) -> dict:
        self.flush()
        self.clips.append(np.array([(self.str_total, self.frame_total, -1, 0, 0, 0, 0, 0, 0)], dtype=CLIP_DTYPE))
        for writer in (self.clips, self.strings, self.frames, self.fb_blob, self.fb_off):
            writer.close()
        return {"format": FORMAT, "pairs": self.pairs, "frames": self.frame_total, "dropped": self.dropped,
                "fallback_pairs": self.fallback_pairs, "layout": "original" if self.index is not None else "release"}


def build_train_store(path: Path, out: Path, index: Img2DatasetIndex | None = None) -> dict:
    """Parse the TSV at `path` line by line into the columns in `out`; returns the meta fields.

    Malformed lines raise DataError naming file:line, with the list parser's messages.
    """
    writer = _Writer(out, path, index)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            cols = split_columns(line, path, lineno)
            plain = plain_list_items(cols[1].encode("utf-8"))
            if plain is None:
                frames = [f.encode("utf-8") for f in _parse_list(cols[1], path, lineno)]
            elif len(plain[1]) == 0:
                frames = []
            else:
                frames = numbered_frames(*plain)
                if frames is None:
                    a, starts, ends = plain
                    frames = gather_bytes(a, starts, ends).split(b"\n")
            if not cols[0] or not cols[3]:
                raise DataError(f"{path}:{lineno}: empty clip id or image id")
            image_path = b"" if index is not None else cols[4].encode("utf-8")
            writer.add(cols[0].encode("utf-8"), cols[3].encode("utf-8"), image_path, frames)
    return writer.close()


class TrainPairStore(Sequence):
    """`Sequence[TrainPair]` over a built store: `len(store)`, `store[i]` (a fresh TrainPair).

    Release layout: paths are joined to `data_root` as the list parser does
    (`os.path.join(abspath(data_root), relative)`); original layout: resolved through `index`.
    Picklable (DataLoader workers): only folder names travel, the files are reopened.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict, data_root=None,
                 index: Img2DatasetIndex | None = None, mode: str = "pread"):
        self.folder, self.meta, self.mode, self.index = Path(folder), meta, mode, index
        self.root = os.path.abspath(data_root) if data_root is not None else None
        if (index is None) != (meta["layout"] == "release"):
            raise ValueError(f"{folder} holds the {meta['layout']} layout: "
                             f"{'an index is needed' if index is None else 'no index is used'}")
        self._clips = Column(self.folder / "clips.npy", mode)
        self._strings = Column(self.folder / "strings.npy", mode)
        self._frames = Column(self.folder / "frames.npy", mode)
        self._fb_off = Column(self.folder / "fallback_off.npy", mode)
        self._fb_blob = Column(self.folder / "fallback_blob.npy", mode)
        self._n = len(self._clips) - 1

    def __getstate__(self):
        return {"folder": self.folder, "meta": self.meta, "data_root": self.root, "index": self.index,
                "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["meta"], state["data_root"], state["index"], state["mode"])

    def __len__(self) -> int:
        return self._n

    @property
    def dropped(self) -> int:
        """Pairs left out because their image or all their frames are missing from the index."""
        return self.meta["dropped"]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"pair {i} out of range (store of {self._n} pairs)")
        this, end = self._clips.slice(i, i + 2)
        text = self._strings.slice(int(this["str_off"]), int(end["str_off"])).tobytes()
        cut = np.cumsum([0] + [int(this[f"len_{name}"]) for name in STRINGS])
        clip_id, image_id, image_path, prefix, suffix = (text[cut[k]:cut[k + 1]] for k in range(5))
        values = self._frames.slice(int(this["frame_off"]), int(end["frame_off"]))
        width = int(this["width"])
        if self.index is not None:
            frames = self.index.paths(values)
            image = self.index.paths(np.array([this["image_row"]]))[0]
        else:
            image = os.path.join(self.root, image_path.decode("utf-8"))
            if width > 0:
                frames = self._numbered(prefix, suffix, width, values)
            elif width == _FALLBACK:
                frames = [os.path.join(self.root, p) for p in self._fallback(values)]
            else:
                frames = []
        return TrainPair(clip_id.decode("utf-8"), frames, image_id.decode("utf-8"), image)

    def _numbered(self, prefix: bytes, suffix: bytes, width: int, numbers: np.ndarray) -> list[str]:
        """root/prefix + zero-padded number + suffix for every frame, in one vectorised pass."""
        head = os.path.join(self.root, prefix.decode("utf-8")).encode("utf-8")
        h, t = len(head), len(suffix)
        grid = np.empty((len(numbers), h + width + t + 1), np.uint8)
        grid[:, :h] = np.frombuffer(head, np.uint8)
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        grid[:, h:h + width] = (numbers.astype(np.int64)[:, None] // powers) % 10 + 0x30
        grid[:, h + width:h + width + t] = np.frombuffer(suffix, np.uint8)
        grid[:, -1] = 0x0A
        return grid.tobytes()[:-1].decode("utf-8").split("\n")

    def _fallback(self, rows: np.ndarray) -> list[str]:
        """Frame strings of a clip stored in the fallback table (its rows are contiguous)."""
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        off = self._fb_off.slice(lo, hi + 1)
        blob = self._fb_blob.slice(int(off[0]), int(off[-1]))
        return gather_bytes(blob, off[:-1] - off[0], off[1:] - off[0]).decode("utf-8").split("\n")


def open_train_store(path: str | os.PathLike, data_root=None, index: Img2DatasetIndex | None = None,
                     cache_dir: str | os.PathLike | None = None, mode: str = "pread") -> TrainPairStore:
    """The store of a training/validation TSV, built on first use and rebuilt when the TSV changes.

    Release layout (no index): cached as `.<tsv>.store/`; original layout (an
    `Img2DatasetIndex`): `.<tsv>.<index tag>.store/`, also rebuilt when the index changes.
    The folder is beside the TSV when writable, else in `cache_dir` / $RICE_CACHE_DIR /
    ~/.cache/rice (see `dataloaders.columnar`).
    """
    path = Path(path)
    key = {"format": FORMAT, "source": fingerprint(path),
           "index": None if index is None else index.meta["key"]}
    suffix = ".store"
    if index is not None:
        suffix = "." + hashlib.sha1(str(index.folder.resolve()).encode()).hexdigest()[:8] + ".store"
    location = store_location(path, suffix, cache_dir)
    for attempt in range(2):
        folder, meta = cached_store(location, key, lambda out: build_train_store(path, out, index))
        try:
            return TrainPairStore(folder, meta, data_root, index, mode)
        except FileNotFoundError:      # replaced by a newer build between the check and the open
            if attempt:
                raise
    raise AssertionError("unreachable")
