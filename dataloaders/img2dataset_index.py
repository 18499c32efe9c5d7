"""Index img2dataset shard folders: frame_id / image_id -> file path (docs/data.md).

img2dataset writes `<root>/00000/000000001.jpg` next to `000000001.json`, whose "url" ends in
`<frame_id>.jpg` (frames) or `<image_id>.jpg` (shop images). The index lets the LPR4M loaders
use those files where they are, without renaming or moving anything. img2dataset's
webdataset output (`<root>/00000.tar` holding `000000001.jpg` and `000000001.json`) is
indexed too: its relative path is `00000.tar#<offset>+<size>`, where the image's bytes lie
in the tar; tools/pack_shards.py reads those (training from files needs the files output).

Index file (TSV, UTF-8):
    #root<TAB>0<TAB>/abs/path/to/frames_shards
    #root<TAB>1<TAB>/abs/path/to/images_shards
    <id><TAB><root number><TAB><path relative to that root>

Two readers: `load_img2dataset_index` returns a dict (small indexes, tests);
`open_img2dataset_index` returns an `Img2DatasetIndex`, a read-only mapping over a columnar
store built once from the TSV and cached beside it (`.<index>.store/`, see
`dataloaders.columnar`), for the full LPR4M (473M frame ids: a dict would take ~106 GB).

Store layout: ids are split into a prefix and a 4-digit number when they end in `-NNNN`
(frame ids `<clip_id>-NNNN`), else the whole id is the prefix (image ids). `prefixes.npy`:
the distinct prefixes, sorted, fixed width; `keys.npy`: sorted int64 keys
`prefix_rank << 14 | (number + 1)` (number + 1 = 0: no number); `rows.npy`: the TSV row of
each key (uint32); `root.npy`, `rel_blob.npy`, `rel_off.npy`: root number and relative path
of each TSV row, in file order. A lookup is two binary searches (numpy searchsorted); a
repeated id keeps its last line, as the dict does.
"""
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from utils.errors import DataError

from .columnar import Column, NpyWriter, cached_store, fingerprint, gather_bytes, save_array, store_location

logger = logging.getLogger(__name__)


def id_from_url(url: str) -> str:
    """'https://host/a/b/<id>.jpg?x=1' -> '<id>' (the file name without its extension)."""
    name = PurePosixPath(urlparse(url).path).name
    return name.rsplit(".", 1)[0] if "." in name else name


def build_img2dataset_index(roots: list[str | os.PathLike], output: str | os.PathLike,
                            progress: bool = True) -> dict:
    """Scan shard folders and write the TSV index. Returns counts.

    A sample whose image file is absent (failed download) is left out; an id seen twice keeps
    its first file. Returns {"indexed", "missing_file", "duplicates", "bad_json"}.
    """
    roots = [Path(r).resolve() for r in roots]
    for root in roots:
        if not root.is_dir():
            raise DataError(f"img2dataset folder {root} does not exist")
    counts = {"indexed": 0, "missing_file": 0, "duplicates": 0, "bad_json": 0}
    seen: set[str] = set()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for number, root in enumerate(roots):
            out.write(f"#root\t{number}\t{root}\n")
        for number, root in enumerate(roots):
            for tar in tqdm(sorted(root.glob("*.tar")), desc=f"indexing {root.name} (tar)", disable=not progress):
                for key, ref in _tar_entries(tar, root, counts):
                    if key in seen:
                        counts["duplicates"] += 1
                        continue
                    seen.add(key)
                    out.write(f"{key}\t{number}\t{ref}\n")
                    counts["indexed"] += 1
            metas = sorted(root.glob("*/*.json"))
            for meta in tqdm(metas, desc=f"indexing {root.name}", disable=not progress):
                try:
                    url = json.loads(meta.read_text(encoding="utf-8"))["url"]
                except (ValueError, KeyError, TypeError):
                    counts["bad_json"] += 1
                    continue
                image = meta.with_suffix(".jpg")
                if not image.is_file():
                    counts["missing_file"] += 1
                    continue
                key = id_from_url(url)
                if key in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(key)
                out.write(f"{key}\t{number}\t{image.relative_to(root).as_posix()}\n")
                counts["indexed"] += 1
    os.replace(tmp, output)
    return counts


def _tar_entries(tar: Path, root: Path, counts: dict) -> list[tuple[str, str]]:
    """(id, `<shard>.tar#<offset>+<size>`) of the images in one img2dataset webdataset shard.

    The members of a sample share the key (`000000001.jpg`, `000000001.json`, ...); the
    reference gives where the image's bytes lie in the tar (read by tools/pack_shards.py).
    A shard cut short keeps the samples read before the cut (logged).
    """
    images, urls = {}, {}
    try:
        with tarfile.open(tar, "r:") as f:
            for info in f:
                if not info.isfile():
                    continue
                key, _, ext = info.name.rpartition(".")
                if ext == "json":
                    try:
                        urls[key] = json.loads(f.extractfile(info).read())["url"]
                    except (ValueError, KeyError, TypeError):
                        counts["bad_json"] += 1
                elif ext.lower() in ("jpg", "jpeg"):
                    images[key] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as err:
        logger.warning("%s: cannot be read to its end (%s); indexing the %d samples before that", tar, err,
                       len(urls))
    rel = tar.relative_to(root).as_posix()
    entries = []
    for key, url in urls.items():
        if key not in images:
            counts["missing_file"] += 1
            continue
        offset, size = images[key]
        entries.append((id_from_url(url), f"{rel}#{offset}+{size}"))
    return entries


def load_img2dataset_index(path: str | os.PathLike) -> dict[str, str]:
    """Read a TSV index written by `build_img2dataset_index` -> {id: absolute path}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"img2dataset index {path} not found; build it with tools/index_img2dataset.py")
    roots: dict[str, str] = {}
    index: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
            if fields[0] == "#root":
                roots[fields[1]] = fields[2]
            elif fields[1] not in roots:
                raise DataError(f"{path}:{lineno}: unknown root number {fields[1]!r}")
            else:
                index[fields[0]] = os.path.join(roots[fields[1]], fields[2])
    return index


# ------------------------------------------------------------------------------- columnar store
STORE_FORMAT = 1
NUMBER_BITS = 14                # key = prefix rank << 14 | (number + 1); numbers are 0..9999
_BLOCK = 32 << 20               # bytes of TSV parsed at once
_BATCH = 1 << 16                # lines whose prefixes are compared at once
_DIGIT = np.arange(48, 58)


def split_id(key: bytes) -> tuple[bytes, int]:
    """b'<prefix>-NNNN' -> (b'<prefix>', NNNN); any other id -> (id, -1)."""
    if len(key) >= 5 and key[-5] == 0x2D and key[-4:].isdigit():
        return key[:-5], int(key[-4:])
    return key, -1


def _fields(a: np.ndarray, start: int, stop: int) -> list[bytes]:
    return a[start:stop].tobytes().split(b"\t")


def _build_index_columns(path: Path, out: Path) -> dict:
    """Parse the TSV index in blocks (vectorised, no object per line) into `out`."""
    roots: dict[bytes, int] = {}        # root field as written -> root number in the store
    root_paths: list[str] = []
    prefix_ids: dict[bytes, int] = {}   # one entry per distinct prefix (per clip, not per frame)
    w_pid, w_num = NpyWriter(out / "tmp_pid.npy", np.uint32), NpyWriter(out / "tmp_num.npy", np.int16)
    w_root, w_blob = NpyWriter(out / "root.npy", np.uint16), NpyWriter(out / "rel_blob.npy", np.uint8)
    w_off = NpyWriter(out / "rel_off.npy", np.int64)
    w_off.append([0])
    state = {"lineno": 0, "blob": 0}

    def prefix_numbers(a, s, plen):
        """The prefix id of each line [s, s + plen). Each line is compared with the line before
        it, in batches (frames of a clip are adjacent); only the first line of each run of equal
        prefixes goes through the dict (a Python object per clip, not per frame)."""
        zero = len(a) - 1                            # the block's last byte is its final b"\n"
        a0 = a.copy()
        a0[zero] = 0
        pids = []
        for lo in range(0, len(s), _BATCH):
            ps, pl = s[lo:lo + _BATCH].astype(np.int64), plen[lo:lo + _BATCH]
            width = max(int(pl.max()), 1)
            cols = np.arange(width)
            grid = a0[np.where(cols < pl[:, None], ps[:, None] + cols, zero)]
            head = np.ones(len(grid), bool)
            head[1:] = (grid[1:] != grid[:-1]).any(1)
            names = grid[head].view(f"S{width}").reshape(-1).tolist()
            ids = np.fromiter((prefix_ids.setdefault(p, len(prefix_ids)) for p in names), np.int64, len(names))
            pids.append(ids[np.cumsum(head) - 1])
        return np.concatenate(pids)

    def regular(a, s, t1, t2, e, first_line):
        """Lines [s, e) with tabs t1, t2: ids, roots and paths to the column writers."""
        if len(s) == 0:
            return
        root_no = np.full(len(s), -1, np.int32)
        rlen = t2 - t1 - 1
        for text, number in roots.items():
            m = rlen == len(text)
            for j, ch in enumerate(text):
                m &= a[np.minimum(t1 + 1 + j, len(a) - 1)] == ch
            root_no[m] = number
        bad = np.flatnonzero(root_no < 0)
        if len(bad):
            k = bad[0]
            field = a[t1[k] + 1:t2[k]].tobytes().decode("utf-8", "replace")
            raise DataError(f"{path}:{first_line + k}: unknown root number {field!r}")
        # id = prefix [+ '-NNNN']
        idlen = t1 - s
        tail = t1[:, None] - 4 + np.arange(4)
        digits = a[np.clip(tail, 0, len(a) - 1)].astype(np.int64) - 48
        has = (idlen >= 5) & (a[np.maximum(t1 - 5, 0)] == 0x2D) & ((digits >= 0) & (digits <= 9)).all(1)
        num = np.where(has, digits @ np.array([1000, 100, 10, 1]), -1)
        plen = np.where(has, idlen - 5, idlen)
        w_pid.append(prefix_numbers(a, s, plen))
        w_num.append(num)
        w_root.append(root_no)
        rel = gather_bytes(a, t2 + 1, e, sep=b"")
        w_blob.append_bytes(rel)
        w_off.append(state["blob"] + np.cumsum(e - t2 - 1))
        state["blob"] += len(rel)

    def block(data: bytes):
        a = np.frombuffer(data, np.uint8)
        ends = np.flatnonzero(a == 10)
        starts = np.r_[0, ends[:-1] + 1]
        ends = ends - ((ends > starts) & (a[np.maximum(ends - 1, 0)] == 13))      # \r\n
        tabs = np.flatnonzero(a == 9)
        ti, tj = np.searchsorted(tabs, starts), np.searchsorted(tabs, ends)
        bad = np.flatnonzero(tj - ti != 2)
        if len(bad):
            k = bad[0]
            raise DataError(f"{path}:{state['lineno'] + k + 1}: expected 3 tab-separated fields, "
                            f"got {tj[k] - ti[k] + 1}")
        t1, t2 = tabs[ti], tabs[np.minimum(ti + 1, len(tabs) - 1)]
        header = np.flatnonzero((t1 - starts == 5) & (a[starts] == 0x23))
        header = [k for k in header.tolist() if a[starts[k]:t1[k]].tobytes() == b"#root"]
        done = 0
        for k in header + [len(starts)]:
            regular(a, starts[done:k], t1[done:k], t2[done:k], ends[done:k], state["lineno"] + done + 1)
            if k < len(starts):
                _, number, root = _fields(a, starts[k], ends[k])
                roots[number] = len(root_paths)
                root_paths.append(root.decode("utf-8"))
            done = k + 1
        state["lineno"] += len(starts)

    with open(path, "rb") as f:
        carry = b""
        while True:
            chunk = f.read(_BLOCK)
            data = carry + chunk
            if not chunk:
                if data:
                    block(data if data.endswith(b"\n") else data + b"\n")
                break
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                block(data[:cut])
    for writer in (w_pid, w_num, w_root, w_blob, w_off):
        writer.close()
    # sort: distinct prefixes, then the int64 keys
    plist = sorted(prefix_ids)
    rank = np.empty(len(plist), np.int64)
    rank[np.fromiter((prefix_ids[p] for p in plist), np.int64, len(plist))] = np.arange(len(plist))
    prefix_ids.clear()
    save_array(out / "prefixes.npy", np.array(plist, dtype=f"S{max(map(len, plist), default=1) or 1}"))
    del plist
    keys = rank[np.load(out / "tmp_pid.npy", mmap_mode="r")] << NUMBER_BITS
    keys |= np.load(out / "tmp_num.npy", mmap_mode="r").astype(np.int64) + 1
    (out / "tmp_pid.npy").unlink()
    (out / "tmp_num.npy").unlink()
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    keep = np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)   # repeated id: last line
    save_array(out / "keys.npy", keys[keep])
    save_array(out / "rows.npy", order[keep].astype(np.uint32))
    return {"format": STORE_FORMAT, "roots": root_paths, "ids": int(keep.sum()), "lines": int(len(keep))}


class Img2DatasetIndex(Mapping):
    """Read-only mapping id -> absolute path over the columnar store of a TSV index.

    `index[id]`, `id in index`, `index.get(id, "")`, `len(index)` as with the dict; the
    vectorised `lookup(prefixes, numbers, counts)` and `paths(rows)` serve the annotation store.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict, mode: str = "pread"):
        self.folder, self.meta, self.mode = Path(folder), meta, mode
        self.roots = [os.path.join(r, "") for r in meta["roots"]]      # "root/" as os.path.join adds it
        self._prefixes = np.load(self.folder / "prefixes.npy", mmap_mode="r")
        self._keys = np.load(self.folder / "keys.npy", mmap_mode="r")
        self._rows = np.load(self.folder / "rows.npy", mmap_mode="r")
        self._root = Column(self.folder / "root.npy", mode)
        self._off = Column(self.folder / "rel_off.npy", mode)
        self._blob = Column(self.folder / "rel_blob.npy", mode)

    def __getstate__(self):
        return {"folder": self.folder, "meta": self.meta, "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["meta"], state["mode"])

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        for key in self._keys:                      # slow: tests and small indexes only
            prefix = self._prefixes[int(key) >> NUMBER_BITS].decode("utf-8")
            number = (int(key) & ((1 << NUMBER_BITS) - 1)) - 1
            yield prefix if number < 0 else f"{prefix}-{number:04d}"

    def __getitem__(self, key: str) -> str:
        row = int(self.lookup_ids([key])[0])
        if row < 0:
            raise KeyError(key)
        return self.paths(np.array([row]))[0]

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and int(self.lookup_ids([key])[0]) >= 0

    def prefix_ranks(self, prefixes: list[bytes]) -> np.ndarray:
        """Rank of each prefix in the sorted prefix table, -1 when absent."""
        width, n = self._prefixes.dtype.itemsize, len(self._prefixes)
        if not prefixes or n == 0:
            return np.full(len(prefixes), -1, np.int64)
        fits = np.fromiter((len(p) <= width and not p.endswith(b"\0") for p in prefixes), bool, len(prefixes))
        query = np.array([p if f else b"" for p, f in zip(prefixes, fits)], dtype=f"S{width}")
        pos = np.searchsorted(self._prefixes, query)
        found = fits & (pos < n)
        found[found] &= self._prefixes[pos[found]] == query[found]
        return np.where(found, pos, -1)

    def lookup(self, prefixes: list[bytes], numbers: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """TSV rows (int64, -1 when absent) of ids given as prefix k with counts[k] numbers each."""
        numbers = np.asarray(numbers, np.int64)
        ranks = np.repeat(self.prefix_ranks(prefixes), counts)
        keys = (ranks << NUMBER_BITS) | (numbers + 1)
        rows = np.full(len(keys), -1, np.int64)
        if len(self._keys) == 0 or len(keys) == 0:
            return rows
        order = np.argsort(keys)            # sorted queries: searchsorted narrows from the last hit
        pos = np.searchsorted(self._keys, keys[order])
        hit = pos < len(self._keys)
        hit[hit] &= self._keys[pos[hit]] == keys[order][hit]
        hit &= ranks[order] >= 0
        rows[order[hit]] = self._rows[pos[hit]]
        return rows

    def lookup_ids(self, ids: list[str]) -> np.ndarray:
        """TSV rows of ids given as strings (one Python call per id: small inputs only)."""
        parts = [split_id(i.encode("utf-8")) for i in ids]
        return self.lookup([p for p, _ in parts], np.array([n for _, n in parts], np.int64),
                           np.ones(len(parts), np.int64))

    def paths(self, rows: np.ndarray) -> list[str]:
        """Absolute paths of TSV rows (vectorised; rows close together are read in one go)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return []
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * len(rows) + 256:      # a clip's frames: one contiguous range of rows
            off, roots = self._off.slice(lo, hi + 1), self._root.slice(lo, hi)
            blob = self._blob.slice(int(off[0]), int(off[-1]))
            r = rows - lo
            starts, ends, root_no = off[r] - off[0], off[r + 1] - off[0], roots[r]
        else:
            off, blob = self._off.array, self._blob.array
            starts, ends, root_no = off[rows], off[rows + 1], self._root.array[rows]
        absolute = (ends > starts) & (blob[np.minimum(starts, max(len(blob) - 1, 0))] == 0x2F) \
            if len(blob) else np.zeros(len(rows), bool)
        if (root_no == root_no[0]).all() and not absolute.any():
            head = self.roots[int(root_no[0])]
            sep = ("\n" + head).encode("utf-8")
            return (head + gather_bytes(blob, starts, ends, sep).decode("utf-8")).split("\n")
        rels = gather_bytes(blob, starts, ends).decode("utf-8").split("\n")
        return [os.path.join(self.roots[r], p) for r, p in zip(root_no.tolist(), rels)]


def open_img2dataset_index(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                           mode: str = "pread") -> Img2DatasetIndex:
    """The columnar store of a TSV index, built on first use and cached (`.<index>.store/`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"img2dataset index {path} not found; build it with tools/index_img2dataset.py")
    key = {"format": STORE_FORMAT, "source": fingerprint(path)}
    folder, meta = cached_store(store_location(path, ".store", cache_dir), key,
                                lambda out: _build_index_columns(path, out))
    return Img2DatasetIndex(folder, meta, mode)
