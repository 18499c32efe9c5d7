"""Pack the LPR4M training pairs into WebDataset tar shards for training (docs/data.md, "Shards").

    python tools/pack_shards.py --data_root /data/lpr750k --output_dir /data/shards          # LPR750K folders
    python tools/pack_shards.py --data_root /data/lpr4m_annotations --index lpr4m_index.tsv \\
        --output_dir /data/shards                                                         # img2dataset output
    python tools/pack_shards.py --index_only --output_dir /data/shards      # sidecars + manifest of shards

Shard s holds TSV rows [s*N, (s+1)*N) (N = --samples_per_shard): per sample its shop image,
ALL its frames (the files' own JPEG bytes) and a json record. Resumable: every shard is
written under a temporary name, fsynced and renamed; a rerun skips finished shards and
writes the same bytes an uninterrupted run writes. The last steps write samples.npy and
manifest.json (atomically) and pack_report.json / pack_report.tsv: samples dropped (shop
image missing or unreadable, no readable frame) and frames left out (missing, unreadable,
not a JPEG).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import DataError, one_line_errors  # noqa: E402

# ~1 GB shards: an LPR4M clip has ~118 frames (1 fps); img2dataset frames (shorter side 256, e.g.
# 256x455, JPEG quality 95) are ~40 KB, so a sample is ~4.8 MB and 200 samples ~1 GB
# (benchmarks/bench_pack.py measures the bytes per clip). Large enough for long sequential reads
# and few files (~20,000 shards for 4.01M clips, far more than ranks x workers), small enough
# that a shuffle window of a few shards mixes many livestreams and re-packing one shard is quick.
DEFAULT_SAMPLES_PER_SHARD = 200
PREFIX = "train"                   # shard names: train-000000.tar, ...
PART_DIR = ".pack"                 # per-shard report parts and the pack's settings
REPORT_EXAMPLES = 20
_TAR_REF = re.compile(r"^(.*\.tar)#(\d+)\+(\d+)$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", help="LPR4M root holding the training TSV (release layout: frame and image "
                   "paths are relative to it; with --index: the folder of the original annotations)")
    p.add_argument("--train_annotation", help="training TSV (default: training_videoinfo_*.txt found under "
                   "DATA_ROOT or DATA_ROOT/annotations)")
    p.add_argument("--index", help="img2dataset index TSV of tools/index_img2dataset.py (files or webdataset "
                   "output); the TSV then holds frame and image ids")
    p.add_argument("--output_dir", required=True, help="folder of the shards, sidecars, manifest and report")
    p.add_argument("--samples_per_shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD,
                   help="training pairs per shard (default %(default)s: ~1 GB shards for clips of ~118 frames "
                   "of ~40 KB)")
    p.add_argument("--workers", type=int, default=None,
                   help="packing processes, each writing whole shards (default: the CPUs this process may use)")
    p.add_argument("--index_only", action="store_true",
                   help="write the missing sidecars (by scanning each tar once), samples.npy and manifest.json "
                   "for the shards in --output_dir; packs nothing")
    return p


# ------------------------------------------------------------------------------- reading sources
def read_source(path: str) -> tuple[bytes | None, str]:
    """(JPEG bytes, "") or (None, why): a file, or `<download shard>.tar#<offset>+<size>` (webdataset)."""
    try:
        m = _TAR_REF.match(path)
        if m:
            size = int(m.group(3))
            fd = os.open(m.group(1), os.O_RDONLY)
            try:
                data = os.pread(fd, size, int(m.group(2)))
            finally:
                os.close(fd)
            if len(data) != size:
                return None, "download shard truncated"
        else:
            with open(path, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        return None, "missing"
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    if not data.startswith(b"\xff\xd8\xff"):
        return None, "not a JPEG" if data else "empty file"
    return data, ""


def _source_name(path: str, root: str | None) -> str:
    """The path relative to the data root when it lies under it (shards do not name this machine's folders)."""
    if root and path.startswith(root + os.sep):
        return path[len(root) + 1:]
    return path


# --------------------------------------------------------------------------------------- packing
def shard_name(prefix: str, s: int) -> str:
    return f"{prefix}-{s:06d}.tar"


def _pack_shard(job: tuple) -> tuple[int, int]:
    """Write shard s (in a worker process); returns (s, samples written)."""
    from dataloaders.shard_format import SLOT_JSON, SLOT_SHOP, ShardWriter

    store, out, prefix, s, per_shard, root = job
    out = Path(out)
    name = shard_name(prefix, s)
    writer = ShardWriter(out / name)
    lines, written = [], 0
    try:
        for row in range(s * per_shard, min(len(store), (s + 1) * per_shard)):
            pair = store[row]
            n = len(pair.frame_paths)
            image, why = read_source(pair.image_path)
            if image is None:
                lines.append(("dropped_sample", row, pair.clip_id, "shop", why, _source_name(pair.image_path, root)))
                continue
            frames = []
            for k, path in enumerate(pair.frame_paths):
                data, why = read_source(path)
                if data is None:
                    kind = "missing_frame" if why == "missing" else "corrupt_frame"
                    lines.append((kind, row, pair.clip_id, f"f{k:04d}", why, _source_name(path, root)))
                else:
                    frames.append((k, data))
            if not frames:
                lines.append(("dropped_sample", row, pair.clip_id, "frames", "no readable frame", ""))
                continue
            meta = {"clip_id": pair.clip_id, "image_id": pair.image_id, "frames": n, "row": row,
                    "image_source": _source_name(pair.image_path, root),
                    "frame_sources": [_source_name(p, root) for p in pair.frame_paths]}
            writer.add(row, SLOT_JSON, n, json.dumps(meta, sort_keys=True).encode("utf-8"))
            writer.add(row, SLOT_SHOP, n, image)
            for k, data in frames:
                writer.add(row, k, n, data)
            written += 1
        part = out / PART_DIR / f"{name}.tsv"
        tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines("\t".join(map(str, line)) + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, part)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return s, written


def _settings(args, tsv: Path, index) -> dict:
    from dataloaders.columnar import fingerprint

    source = {k: v for k, v in fingerprint(tsv).items() if k != "mtime_ns"}
    return {"source": source, "index": None if index is None else index.meta["key"]["source"]["path"],
            "samples_per_shard": args.samples_per_shard,
            "data_root": os.path.abspath(args.data_root)}


def _check_settings(out: Path, settings: dict) -> None:
    path = out / PART_DIR / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise DataError(f"--output_dir {out} holds shards packed with other settings ({', '.join(changed)} "
                            "differ): pack into another --output_dir, or delete its shards to start afresh")
        return
    tmp = path.with_name(f".settings.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _remove_leftovers(out: Path) -> None:
    """Temporary files of a killed pack (their shard is written again)."""
    for folder in (out, out / PART_DIR):
        for path in folder.glob(".*.tmp-*"):
            path.unlink(missing_ok=True)


def _finished(out: Path, name: str) -> bool:
    from dataloaders.shard_format import sidecar_path

    return all(p.is_file() for p in (out / name, sidecar_path(out / name), out / PART_DIR / f"{name}.tsv"))


def _finish(out: Path, names: list[str], extra: dict) -> dict:
    """samples.npy and manifest.json from the shards' sidecars (read one shard at a time)."""
    import numpy as np

    from dataloaders.shard_format import sample_table, sidecar_path, write_table_and_manifest

    entries = []

    def tables():
        for name in names:
            table = sample_table(np.load(sidecar_path(out / name)))
            entries.append({"name": name, "samples": len(table), "tar_bytes": (out / name).stat().st_size,
                            "frames": int(table["frames"].sum())})
            yield table

    return write_table_and_manifest(out, entries, tables(), extra)


def _write_report(out: Path, names: list[str]) -> dict:
    """pack_report.tsv (every item) and pack_report.json (counts, a few examples), atomically."""
    counts: dict[str, int] = {}
    examples: dict[str, list] = {}
    tmp = out / f".pack_report.tsv.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("kind\trow\tclip_id\tmember\treason\tsource\n")
        for name in names:
            for line in (out / PART_DIR / f"{name}.tsv").read_text(encoding="utf-8").splitlines():
                kind = line.split("\t", 1)[0]
                counts[kind] = counts.get(kind, 0) + 1
                if len(examples.setdefault(kind, [])) < REPORT_EXAMPLES:
                    examples[kind].append(line.split("\t"))
                f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / "pack_report.tsv")
    report = {kind: {"count": counts.get(kind, 0), "examples": examples.get(kind, [])}
              for kind in ("dropped_sample", "missing_frame", "corrupt_frame")}
    tmp = out / f".pack_report.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / "pack_report.json")
    return report


def pack(args) -> dict:
    import multiprocessing

    from tqdm import tqdm

    from dataloaders.lpr4m import _resolve_file, load_lpr4m_train

    if not args.data_root:
        raise DataError("--data_root is required to pack (only --index_only works without it)")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PART_DIR).mkdir(exist_ok=True)
    tsv = _resolve_file(args.data_root, args.train_annotation, "training_videoinfo_*.txt", "training annotation",
                        exclude=("_val",))
    store = load_lpr4m_train(args.data_root, "train", annotation=tsv, index=args.index)
    lock = open(out / PART_DIR / "lock", "a+b")     # held until this process ends
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(f"another pack_shards.py is writing into {out}; wait for it to end (or stop it: a rerun "
                        "resumes where it stopped)") from None
    _check_settings(out, _settings(args, tsv, store.index))
    _remove_leftovers(out)
    per = args.samples_per_shard
    names = [shard_name(PREFIX, s) for s in range(-(-len(store) // per))]
    todo = [s for s, name in enumerate(names) if not _finished(out, name)]
    root = os.path.abspath(args.data_root) if store.index is None else None
    jobs = [(store, str(out), PREFIX, s, per, root) for s in todo]
    workers = max(1, min(args.workers or len(os.sched_getaffinity(0)), len(jobs) or 1))
    bar = tqdm(total=len(names), initial=len(names) - len(todo), unit="shard", desc="packing")
    if workers == 1:
        for job in jobs:
            _pack_shard(job)
            bar.update(1)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_pack_shard, jobs):
                bar.update(1)
    bar.close()
    report = _write_report(out, names)
    manifest = _finish(out, names, {"samples_per_shard": per, "source_pairs": len(store)})
    print(f"packed {manifest['samples']} of {len(store)} pairs into {len(names)} shards in {out} "
          f"({len(todo)} written now); dropped {report['dropped_sample']['count']} samples, left out "
          f"{report['missing_frame']['count']} missing and {report['corrupt_frame']['count']} corrupt frames "
          f"(pack_report.json)")
    return {"manifest": manifest, "report": report, "written": todo}


def index_only(args) -> dict:
    from dataloaders.columnar import NpyWriter, fsync_dir
    from dataloaders.shard_format import MANIFEST, MEMBER_DTYPE, scan_shard, sidecar_path

    out = Path(args.output_dir)
    if not out.is_dir():
        raise DataError(f"--output_dir {out} does not exist; give the folder that holds the .tar shards")
    names = sorted(p.name for p in out.glob("*.tar") if not p.name.startswith("."))
    if not names:
        raise DataError(f"--output_dir {out} holds no .tar shards")
    built = []
    for name in names:
        side = sidecar_path(out / name)
        if side.is_file():
            continue
        rows = scan_shard(out / name)
        tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
        writer = NpyWriter(tmp, MEMBER_DTYPE)
        writer.append(rows)
        writer.close()
        os.replace(tmp, side)
        built.append(name)
    fsync_dir(out)
    try:   # what the packer recorded besides the shards (its settings) stays
        before = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        extra = {k: v for k, v in before.items() if k not in ("format", "samples", "shards")}
    except (OSError, ValueError, AttributeError):
        extra = {}
    manifest = _finish(out, names, extra)
    print(f"indexed {len(names)} shards in {out} ({len(built)} sidecars built); {manifest['samples']} samples")
    return {"manifest": manifest, "built": built}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        if args.samples_per_shard < 1:
            raise DataError(f"--samples_per_shard must be at least 1, got {args.samples_per_shard}")
        if args.workers is not None and args.workers < 1:
            raise DataError(f"--workers must be at least 1, got {args.workers}")
        return index_only(args) if args.index_only else pack(args)


if __name__ == "__main__":
    main()
