"""Column files on disk and their cache: the machinery under the annotation store and the index.

A store is a folder of 1-D `.npy` files plus `meta.json` (docs/data.md, "Annotation store"):

  * `NpyWriter` appends to a `.npy` file whose length is known only at the end (the header
    is written last), so a build streams its input and never holds a whole column;
  * `Column` reads slices of such a file with `os.pread` (default) or through a read-only
    memory map. pread copies only the bytes asked for and leaves the file in the page cache,
    which every process shares: a DataLoader worker that reads 100,000 samples keeps no
    private pages, whereas a memory map keeps every page it touched (and the kernel maps
    ~16 pages around each fault), which counts as the worker's private memory;
  * `cached_store` finds or builds the store of a source file: beside it, hidden
    (`.<file><suffix>/`), when its folder is writable, else in the cache folder
    ($RICE_CACHE_DIR, default ~/.cache/rice). The store is rebuilt when the source's
    fingerprint changes (size, mtime, SHA-256 of its first and last MiB). A build runs in a
    temporary folder `<store>.tmp-<pid>-<random>`, fsyncs every file, writes meta.json last,
    and renames the folder into place, under an exclusive lock on `<store>.lock`: several
    ranks starting at once build it once, the others wait and then open it; a reader never
    sees a half-written store, and leftovers of a killed build are removed by the next build.
"""
import fcntl
import hashlib
import json
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

HASHED_BYTES = 1 << 20       # the fingerprint hashes this much of the head and of the tail
META = "meta.json"


class NpyWriter:
    """Append-only writer of a 1-D `.npy` file: `append(array)` ..., then `close()`."""

    def __init__(self, path: str | os.PathLike, dtype):
        self.path, self.dtype, self.size = Path(path), np.dtype(dtype), 0
        longest = len(self._header(10**19)) + 11        # magic, version, length, header, newline
        self._header_bytes = -(-longest // 64) * 64      # room for any length, 64-byte aligned data
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * self._header_bytes)

    def _header(self, size: int) -> bytes:
        return repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (size,)}).encode("latin1")

    def append(self, values) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        self._file.write(memoryview(values).cast("B"))
        self.size += values.size

    def append_bytes(self, data: bytes) -> None:
        """Raw bytes (a uint8 column)."""
        self._file.write(data)
        self.size += len(data) // self.dtype.itemsize

    def close(self) -> None:
        header = self._header(self.size)
        room = self._header_bytes - 10 - len(header) - 1
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", self._header_bytes - 10) + header
                         + b" " * room + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def save_array(path: str | os.PathLike, values: np.ndarray) -> None:
    """np.save + fsync (small columns built in memory)."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(values))
        f.flush()
        os.fsync(f.fileno())


def _read_header(path: Path) -> tuple[np.dtype, int, int]:
    """(dtype, length, data offset) of a 1-D .npy file."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if len(shape) != 1 or fortran:
            raise ValueError(f"{path}: expected a 1-D array, got shape {shape}")
        return dtype, shape[0], f.tell()


class Column:
    """Read-only access to a 1-D `.npy` file: `col[i]`, `col.slice(a, b)`, `col.array` (a memory map).

    `mode="pread"` (default) reads each slice with os.pread; `mode="mmap"` slices a memory
    map. Picklable (a DataLoader worker started by spawn reopens the file).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "pread"):
        if mode not in ("pread", "mmap"):
            raise ValueError(f"mode must be 'pread' or 'mmap', got {mode!r}")
        self.path, self.mode = Path(path), mode
        self.dtype, self.size, self._offset = _read_header(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._map = None

    def __getstate__(self):
        return {"path": self.path, "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["path"], state["mode"])

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __len__(self) -> int:
        return self.size

    @property
    def array(self) -> np.ndarray:
        """The whole column as a read-only memory map (for vectorised searches)."""
        if self._map is None:
            self._map = np.load(self.path, mmap_mode="r")
        return self._map

    def slice(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.size:
            raise IndexError(f"{self.path.name}: slice {start}:{stop} outside 0:{self.size}")
        if self.mode == "mmap":
            return self.array[start:stop]
        size = self.dtype.itemsize
        data = os.pread(self._fd, (stop - start) * size, self._offset + start * size)
        return np.frombuffer(data, dtype=self.dtype)

    def __getitem__(self, i: int):
        return self.slice(i, i + 1)[0]


def gather_bytes(blob: np.ndarray, starts: np.ndarray, ends: np.ndarray, sep: bytes = b"\n") -> bytes:
    """blob[starts[0]:ends[0]] + sep + blob[starts[1]:ends[1]] + ... as one vectorised copy."""
    starts = np.asarray(starts, dtype=np.int64)
    lens = np.asarray(ends, dtype=np.int64) - starts
    if len(lens) == 0:
        return b""
    sep_arr = np.frombuffer(sep, np.uint8)
    step = lens + len(sep_arr)
    out_starts = np.cumsum(step) - step          # where item k goes in the output
    in_concat = np.cumsum(lens) - lens           # where item k is in the items' plain concatenation
    out = np.empty(int(step.sum()), np.uint8)
    total = int(lens.sum())
    if total:
        k = np.arange(total, dtype=np.int64)
        out[k + np.repeat(out_starts - in_concat, lens)] = blob[k + np.repeat(starts - in_concat, lens)]
    if len(sep_arr):
        out[((out_starts + lens)[:, None] + np.arange(len(sep_arr))).reshape(-1)] = np.tile(sep_arr, len(lens))
    return out[: len(out) - len(sep_arr)].tobytes()


# ------------------------------------------------------------------------------------------ cache
def fingerprint(path: str | os.PathLike) -> dict:
    """What identifies a source file's content cheaply: size, mtime, SHA-256 of first/last MiB."""
    path = Path(path)
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HASHED_BYTES))
        if st.st_size > HASHED_BYTES:
            f.seek(max(HASHED_BYTES, st.st_size - HASHED_BYTES))
            digest.update(f.read(HASHED_BYTES))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_head_tail": digest.hexdigest()}


def cache_root() -> Path:
    """$RICE_CACHE_DIR, else ~/.cache/rice."""
    return Path(os.environ.get("RICE_CACHE_DIR") or Path.home() / ".cache" / "rice")


def store_location(source: Path, suffix: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`.<name><suffix>` beside the source when its folder is writable (and no cache_dir is
    given), else `<hash of the source path>-<name><suffix>` in the cache folder."""
    source = Path(source).resolve()
    if cache_dir is None and os.access(source.parent, os.W_OK):
        return source.parent / f".{source.name}{suffix}"     # hidden: globs over the data folder miss it
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    return folder / f"{tag}-{source.name}{suffix}"


def read_meta(store: Path) -> dict | None:
    try:
        with open(store / META, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new or renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(store: Path) -> None:
    """Temporary and replaced folders of earlier builds (only called under the lock)."""
    for pattern in (f"{store.name}.tmp-*", f"{store.name}.old-*"):
        for leftover in store.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def cached_store(store: Path, key: dict, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """The store folder for `key`, built by `build(tmp_folder) -> meta` when absent or stale.

    Returns (folder, meta). `key` (JSON-able) must equal the one in meta.json for the store
    to be used; `build` writes the columns (fsynced) into the folder it is given and returns
    the rest of meta.json.
    """
    meta = read_meta(store)
    if meta is not None and meta.get("key") == key:
        return store, meta
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.with_name(store.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)      # released when the file closes (or the process dies)
        meta = read_meta(store)
        if meta is not None and meta.get("key") == key:   # another process built it while we waited
            return store, meta
        _remove_leftovers(store)
        tmp = store.with_name(f"{store.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        old = None
        try:
            meta = dict(build(tmp), key=key, built_by=os.getpid(), built_at=time.time())
            with open(tmp / META, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            if store.exists():
                old = store.with_name(f"{store.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.rename(store, old)
            os.rename(tmp, store)
            fsync_dir(store.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)   # readers that opened its files keep them
    return store, meta

