"""The shard format: WebDataset tar shards of training samples with index sidecars (docs/data.md, "Shards").

A shard `train-000012.tar` is a plain tar (the WebDataset layout: members `KEY.EXT`, the
members of one sample next to each other). KEY is the sample's row in the training TSV,
9 digits or more; per sample:
    KEY.json          {"clip_id", "image_id", "frames", "row", "frame_sources", "image_source"}
    KEY.shop.jpg      the shop image, the source file's bytes
    KEY.fNNNN.jpg     frame NNNN of the clip (its position in the TSV's frame list), the source
                      file's bytes: never re-encoded, so decoded pixels equal the files' pixels.
                      A frame missing when packed has no member; "frames" still counts it, so
                      the frame sampler sees the clip as the TSV lists it.
Beside it, the sidecar `train-000012.idx.npy` (1-D, MEMBER_DTYPE): one row per member in tar
order: the sample's row, the slot (-1 json, -2 shop image, k >= 0 frame k), the clip's frame
count, the byte offset and size of the member's data. The folder's `samples.npy` (TABLE_DTYPE)
holds one record per sample of all shards, in shard order: where its rows start in its
shard's sidecar, how many, its frame count and TSV row; `manifest.json` lists the shards with
their sample counts and sizes. Both are written by tools/pack_shards.py (also `--index_only`).

`ShardSet` reads with pread: the sample's table record, its sidecar rows, then the tar header
and data of each member it uses (`read_member`, one pread each). Nothing grows with the data
set in a process: the table and the sidecars stay on disk (page cache, shared by every
process); a process keeps the per-shard sample counts and a few open files. A member that
cannot be used (short read of a truncated shard, a header that does not name it) is
skipped and recorded. No torch here: the packer's processes stay small.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.errors import DataError

from .columnar import Column, NpyWriter, _read_header, fsync_dir

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
TABLE = "samples.npy"
SIDECAR_SUFFIX = ".idx.npy"
SLOT_JSON, SLOT_SHOP = -1, -2
MEMBER_DTYPE = np.dtype([("row", "<i8"), ("slot", "<i4"), ("frames", "<u4"), ("offset", "<i8"), ("size", "<u4")])
TABLE_DTYPE = np.dtype([("first", "<i8"), ("count", "<u4"), ("frames", "<u4"), ("row", "<i8")])
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
OPEN_SHARDS = 32              # open shard files kept per process (least recently used closed first)


# ------------------------------------------------------------------------------------ names
def sample_key(row: int) -> str:
    return f"{row:09d}"


def member_name(row: int, slot: int) -> str:
    """`KEY.json`, `KEY.shop.jpg` or `KEY.fNNNN.jpg`."""
    key = sample_key(row)
    if slot == SLOT_JSON:
        return f"{key}.json"
    if slot == SLOT_SHOP:
        return f"{key}.shop.jpg"
    return f"{key}.f{slot:04d}.jpg"


_NAME = re.compile(r"^(\d{9,})\.(json|shop\.jpg|f(\d{4,})\.jpg)$")


def parse_member_name(name: str) -> tuple[int, int] | None:
    """(row, slot) of a member name written by the packer, else None."""
    m = _NAME.match(name)
    if m is None:
        return None
    slot = SLOT_JSON if m.group(2) == "json" else SLOT_SHOP if m.group(3) is None else int(m.group(3))
    return int(m.group(1)), slot


def sidecar_path(tar: Path) -> Path:
    tar = Path(tar)
    return tar.with_name(tar.name[:-len(".tar")] + SIDECAR_SUFFIX)


# ------------------------------------------------------------------------------------ writing
def tar_header(name: str, size: int) -> bytes:
    """A deterministic ustar header (mtime 0, no owner): identical input gives identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "", ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class ShardWriter:
    """Writes one shard and its sidecar under temporary names; `commit()` makes them final.

    Order on commit: both files fsynced, the sidecar renamed, then the tar (the tar's
    presence with its sidecar marks a finished shard), then the folder fsynced.
    """

    def __init__(self, path: Path):
        self.path, self.sidecar = Path(path), sidecar_path(path)
        tag = f".tmp-{os.getpid()}"
        self.tmp = self.path.with_name(f".{self.path.name}{tag}")
        self.tmp_sidecar = self.sidecar.with_name(f".{self.sidecar.name}{tag}")
        self.file = open(self.tmp, "wb")
        self.pos = 0
        self.rows: list[tuple] = []

    def add(self, row: int, slot: int, frames: int, data: bytes) -> None:
        header = tar_header(member_name(row, slot), len(data))
        if len(data) >= 1 << 32:
            raise DataError(f"member {member_name(row, slot)} is {len(data)} bytes; members must be under 4 GiB")
        self.file.write(header)
        self.file.write(data)
        pad = -len(data) % BLOCK
        self.file.write(b"\0" * pad)
        self.rows.append((row, slot, frames, self.pos + len(header), len(data)))
        self.pos += len(header) + len(data) + pad

    def commit(self) -> int:
        """Finish both files; returns the tar's size."""
        end = 2 * BLOCK
        end += -(self.pos + end) % RECORD          # pad to whole records, as tar and tarfile do
        self.file.write(b"\0" * end)
        self.pos += end
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        writer = NpyWriter(self.tmp_sidecar, MEMBER_DTYPE)
        writer.append(np.array(self.rows, dtype=MEMBER_DTYPE))
        writer.close()
        os.replace(self.tmp_sidecar, self.sidecar)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.pos

    def abort(self) -> None:
        self.file.close()
        for path in (self.tmp, self.tmp_sidecar):
            path.unlink(missing_ok=True)


def scan_shard(tar: Path) -> np.ndarray:
    """Sidecar rows of an existing shard, read from its tar headers (for `--index_only`).

    The frame count of each sample comes from its json member. Raises DataError on a tar
    that cannot be read to its end or holds members the packer does not write.
    """
    rows = []
    try:
        with tarfile.open(tar, "r:") as f:
            counts: dict[int, int] = {}
            for info in f:
                parsed = parse_member_name(info.name) if info.isfile() else None
                if parsed is None:
                    raise DataError(f"{tar}: member {info.name!r} is not a packed sample member "
                                    "(KEY.json, KEY.shop.jpg, KEY.fNNNN.jpg)")
                row, slot = parsed
                if slot == SLOT_JSON:
                    counts[row] = int(json.loads(f.extractfile(info).read())["frames"])
                rows.append([row, slot, info.offset_data, info.size])
    except (tarfile.TarError, OSError, ValueError, KeyError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{tar}: cannot be read as a tar shard ({err}); pack it again "
                        "(delete it and rerun tools/pack_shards.py)") from None
    out = np.zeros(len(rows), MEMBER_DTYPE)
    if rows:
        a = np.array(rows, np.int64)
        out["row"], out["slot"], out["offset"], out["size"] = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        missing = sorted(set(out["row"].tolist()) - set(counts))
        if missing:
            raise DataError(f"{tar}: sample {sample_key(missing[0])} has no json member; pack the shard again")
        out["frames"] = np.array([counts[r] for r in out["row"].tolist()], np.uint32)
    return out


def sample_table(sidecar: np.ndarray) -> np.ndarray:
    """TABLE_DTYPE records of one shard's samples from its sidecar rows (vectorised)."""
    if len(sidecar) == 0:
        return np.zeros(0, TABLE_DTYPE)
    start = np.flatnonzero(np.r_[True, sidecar["row"][1:] != sidecar["row"][:-1]])
    table = np.zeros(len(start), TABLE_DTYPE)
    table["first"] = start
    table["count"] = np.diff(np.r_[start, len(sidecar)])
    table["frames"] = sidecar["frames"][start]
    table["row"] = sidecar["row"][start]
    return table


def write_table_and_manifest(folder: Path, shards: list[dict], tables, extra: dict) -> dict:
    """samples.npy (the tables of `shards`, in order) then manifest.json, each written atomically."""
    folder = Path(folder)
    tmp = folder / f".{TABLE}.tmp-{os.getpid()}"
    writer = NpyWriter(tmp, TABLE_DTYPE)
    for table in tables:
        writer.append(table)
    writer.close()
    os.replace(tmp, folder / TABLE)
    manifest = {"format": FORMAT, "samples": int(sum(s["samples"] for s in shards)),
                "shards": shards, **extra}
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)
    return manifest


# ------------------------------------------------------------------------------ finding shards
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar; `{x,y}` lists; nested groups expand left first."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    r = _RANGE.fullmatch(m.group(0))
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise DataError(f"--train_shards {pattern}: range {{{body}}} goes down; write {{low..high}}")
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        items = [f"{k:0{width}d}" for k in range(lo, hi + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise DataError(f"--train_shards {pattern}: cannot read {{{body}}}; use {{000000..000123}} or {{a,b}}")
    return [x for item in items for x in expand_braces(head + item + tail)]


def find_shards(spec: str) -> tuple[Path, list[Path]]:
    """(folder, shard paths) of --train_shards: a folder (all its shards) or a brace pattern."""
    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path, spec)
        return path, [path / s["name"] for s in manifest["shards"]]
    if "{" not in spec and not spec.endswith(".tar"):
        raise DataError(f"--train_shards {spec}: no such folder; give the folder written by "
                        "tools/pack_shards.py or a pattern like DIR/train-{000000..000123}.tar")
    paths = [Path(p) for p in expand_braces(spec)]
    folders = {p.parent for p in paths}
    if len(folders) != 1:
        raise DataError(f"--train_shards {spec}: the shards must lie in one folder (found {len(folders)})")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"--train_shards {spec}: {len(missing)} of {len(paths)} shards do not exist "
                        f"(first: {missing[0]}); check the pattern against the folder")
    return folders.pop(), paths


def read_manifest(folder: Path, spec: str) -> dict:
    try:
        with open(Path(folder) / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(f"--train_shards {spec}: {folder} has no {MANIFEST} (a pack that did not finish?); "
                        f"finish it by rerunning tools/pack_shards.py, or index existing shards with "
                        f"`python tools/pack_shards.py --index_only --output_dir {folder}`") from None
    except (OSError, ValueError) as err:
        raise DataError(f"--train_shards {spec}: cannot read {folder / MANIFEST} ({err}); rebuild it with "
                        f"`python tools/pack_shards.py --index_only --output_dir {folder}`") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{folder / MANIFEST}: shard format {manifest.get('format')}, this code reads {FORMAT}; "
                        "pack the shards again")
    return manifest


# ------------------------------------------------------------------------------------ reading
class ShardSet(Sequence):
    """The samples of some shards of one packed folder, addressed 0..len-1 in shard order.

    `sample(i)` -> (shard path, tar fd, member rows [MEMBER_DTYPE], frame count, TSV row).
    Picklable: only paths and the per-shard counts travel; files are reopened lazily.
    """

    def __init__(self, spec: str):
        self.spec = spec
        folder, paths = find_shards(spec)
        manifest = read_manifest(folder, spec)
        by_name = {s["name"]: (k, s) for k, s in enumerate(manifest["shards"])}
        starts = np.r_[0, np.cumsum([s["samples"] for s in manifest["shards"]])].astype(np.int64)
        chosen, sizes, table_start, truncated = [], [], [], []
        for path in paths:
            if path.name not in by_name:
                raise DataError(f"--train_shards {spec}: {path.name} is not in {folder / MANIFEST}; index the folder "
                                f"again with `python tools/pack_shards.py --index_only --output_dir {folder}`")
            if not sidecar_path(path).is_file():
                raise DataError(f"--train_shards {spec}: {path.name} has no index sidecar "
                                f"{sidecar_path(path).name}; build it with "
                                f"`python tools/pack_shards.py --index_only --output_dir {folder}`")
            k, entry = by_name[path.name]
            chosen.append(path)
            sizes.append(entry["samples"])
            table_start.append(starts[k])
            if path.stat().st_size < entry["tar_bytes"]:
                truncated.append(path.name)
        if truncated:
            logger.warning("%d shards are shorter than their index says (first: %s): their members past the end "
                           "are skipped and reported; pack them again (docs/data.md, Shards)",
                           len(truncated), truncated[0])
        self.folder, self.paths = folder, [str(p) for p in chosen]
        self.sizes = np.array(sizes, np.int64)
        self.cum = np.r_[0, np.cumsum(self.sizes)].astype(np.int64)
        self.table_start = np.array(table_start, np.int64)
        if self.cum[-1] == 0:
            raise DataError(f"--train_shards {spec}: the shards hold no samples")
        self._open()

    def _open(self):
        if not (self.folder / TABLE).is_file():
            raise DataError(f"--train_shards {self.spec}: {self.folder} has no {TABLE}; build it with "
                            f"`python tools/pack_shards.py --index_only --output_dir {self.folder}`")
        self._table = Column(self.folder / TABLE)
        self._files: OrderedDict[int, tuple[int, int, int]] = OrderedDict()   # shard -> (tar fd, sidecar fd, data offset)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_table", "_files")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __del__(self):
        for tar_fd, side_fd, _ in getattr(self, "_files", {}).values():
            for fd in (tar_fd, side_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __len__(self) -> int:
        return int(self.cum[-1])

    def __getitem__(self, i):
        return self.sample(i)

    def _files_of(self, k: int) -> tuple[int, int, int]:
        if k in self._files:
            self._files.move_to_end(k)
            return self._files[k]
        path = Path(self.paths[k])
        side = sidecar_path(path)
        _, _, offset = _read_header(side)
        entry = (os.open(path, os.O_RDONLY), os.open(side, os.O_RDONLY), offset)
        self._files[k] = entry
        while len(self._files) > OPEN_SHARDS:
            for fd in self._files.popitem(last=False)[1][:2]:
                os.close(fd)
        return entry

    def sample(self, i: int):
        """(shard path, tar fd, member rows, frame count, TSV row) of sample i.

        Raises ShardReadError (the caller skips the sample) when the shard's files cannot
        be opened or its sidecar does not hold the rows samples.npy points to.
        """
        k = int(np.searchsorted(self.cum, i, side="right")) - 1
        record = self._table[int(self.table_start[k] + i - self.cum[k])]
        try:
            tar_fd, side_fd, offset = self._files_of(k)
            size = MEMBER_DTYPE.itemsize
            first, count = int(record["first"]), int(record["count"])
            data = os.pread(side_fd, count * size, offset + first * size)
        except (OSError, ValueError) as err:
            raise ShardReadError(f"{self.paths[k]} (cannot open it or its sidecar: {err})") from None
        members = np.frombuffer(data[:len(data) - len(data) % size], MEMBER_DTYPE)
        if len(members) != count or (members["row"] != record["row"]).any():
            raise ShardReadError(f"{self.paths[k]}:{sample_key(int(record['row']))} (sidecar does not match "
                                 f"{TABLE}: run tools/pack_shards.py --index_only)")
        return self.paths[k], tar_fd, members, int(record["frames"]), int(record["row"])


class ShardReadError(Exception):
    """A sample whose shard files cannot be used; the message is what the skip report shows."""


def read_member(path: str, fd: int, members: np.ndarray, row: int, slot: int, skipped: list[str]) -> bytes | None:
    """The data of one member by pread, its tar header checked; on failure record why and return None."""
    name = member_name(row, slot)
    where = f"{path}:{name}"
    hit = np.flatnonzero(members["slot"] == slot)
    if not len(hit):
        skipped.append(f"{where} (missing when packed)")
        return None
    offset, size = int(members["offset"][hit[0]]), int(members["size"][hit[0]])
    try:
        data = os.pread(fd, BLOCK + size, offset - BLOCK)
    except OSError as err:
        skipped.append(f"{where} (read error: {err.strerror})")
        return None
    if len(data) < BLOCK + size:
        skipped.append(f"{where} (shard truncated)")
        return None
    header = data[:BLOCK]
    stored = header[:100].split(b"\0", 1)[0]
    try:
        stored_size = int(header[124:136].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        stored_size = -1
    if stored != name.encode() or stored_size != size:
        skipped.append(f"{where} (tar header damaged)")
        return None
    return data[BLOCK:]
