"""Annotation store at LPR4M scale: conversion time and peak memory, load time, per-worker memory.

    python benchmarks/bench_data_scale.py --clips 1000000 --frames 118 --layout release
    python benchmarks/bench_data_scale.py --clips 1000000 --frames 118 --layout img2dataset
    python benchmarks/bench_data_scale.py --clips 20000 --impl list      # the list parser, for comparison

Generates a training TSV of N clips in a temporary folder (release layout: frame paths
`training_video_0X/<clip_id>/NNNN.jpg`; img2dataset layout: frame ids `<clip_id>-NNNN` plus
an index TSV with one line per frame and image), then, each in a fresh process:
  convert  builds the store(s) (index first for img2dataset); peak RSS of that process;
  load     opens the store and reads 5 items: wall time and that process's RSS;
  worker   one DataLoader worker reads 100,000 random samples' annotations: the private
           memory it adds (USS = Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup,
           after minus before).
`--impl list` does the same with the list parser (`read_training_tsv` + a list of TrainPair,
as `load_lpr4m_train` returned before the store): "convert" is then the parse itself.
The LAST line printed is
    clips=N convert_s=... convert_peak_mb=... load_s=... load_rss_mb=... worker_private_mb=...
Targets at N = 4,013,617: convert peak <= 4 GB, load <= 10 s, load_rss_mb <= 1000,
worker_private_mb <= 200. Not a test: large N needs tens of GB of disk (--workdir).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))


def generate(folder: Path, clips: int, frames: int, layout: str) -> tuple[Path, Path | None]:
    """Write the annotation TSV (and the index TSV for img2dataset); returns their paths."""
    ann = folder / "annotations"
    ann.mkdir(parents=True)
    tsv = ann / f"training_videoinfo_{clips}.txt"
    index = folder / "index.tsv" if layout == "img2dataset" else None
    if layout == "release":
        template = "[" + ", ".join(f"'training_video_0{{1}}/{{0}}/{k:04d}.jpg'" for k in range(frames)) + "]"
    else:
        template = json.dumps([f"{{0}}-{k:04d}" for k in range(frames)])
    suffixes = [f"-{k:04d}\t0\t" for k in range(frames)]
    with open(tsv, "w", encoding="utf-8", buffering=1 << 24) as out, \
            (open(index, "w", encoding="utf-8", buffering=1 << 24) if index else open(os.devnull, "w")) as idx:
        if index:
            idx.write(f"#root\t0\t{folder}/frames\n#root\t1\t{folder}/images\n")
        for c in range(clips):
            live = f"{c // 50:08x}-1c2d-4e5f-8a9b-{c % 7919:012x}"
            start = (c % 50) * 40_000
            clip_id = f"{live}-{start}-{start + 1000 * frames}"
            image_id = f"{c // 5:08x}-aaaa-4bbb-8ccc-{c // 5 % 13:012x}"
            items = template.replace("{0}", clip_id).replace("{1}", str(1 + c % 4))
            out.write(f"{clip_id}\t{items}\t[]\t{image_id}\ttraining_image/{image_id}.jpg\ttitle {c}\t3\tcat\tspu\t\n")
            if index:
                shard = c * (frames + 1)
                idx.write("".join(f"{clip_id}{suffixes[k]}{(shard + k) // 10000:05d}/{shard + k:09d}.jpg\n"
                                  for k in range(frames)))
                if c % 5 == 0:
                    idx.write(f"{image_id}\t1\t{c // 50000:05d}/{c:09d}.jpg\n")
    return tsv, index


CONVERT = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
t = time.perf_counter()
if {impl!r} == "list":
    import os
    from dataloaders.lpr4m import read_training_tsv
    from dataloaders.records import TrainPair
    r = os.path.abspath({data!r})
    pairs = [TrainPair(c, [os.path.join(r, p) for p in f], i, os.path.join(r, ip))
             for c, f, i, ip in read_training_tsv(Path({tsv!r}))]
    n = len(pairs)
else:
    from dataloaders.annotations import open_train_store
    from dataloaders.img2dataset_index import open_img2dataset_index
    index = open_img2dataset_index({index!r}) if {index!r} else None
    t_index = time.perf_counter() - t
    n = len(open_train_store(Path({tsv!r}), {data!r}, index))
print(json.dumps({{"s": time.perf_counter() - t, "n": n,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

LOAD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from dataloaders.annotations import open_train_store
from dataloaders.img2dataset_index import open_img2dataset_index
t = time.perf_counter()
index = open_img2dataset_index({index!r}) if {index!r} else None
store = open_train_store(Path({tsv!r}), {data!r}, index)
n = len(store)
items = [store[i] for i in (0, 1, n // 2, n - 2, n - 1)]
s = time.perf_counter() - t
rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
print(json.dumps({{"s": s, "rss_mb": rss, "frames0": len(items[0].frame_paths), "first": items[0].frame_paths[0]}}))
"""

WORKER = """
import json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
def uss_mb():
    fields = dict(l.split(":", 1) for l in open("/proc/self/smaps_rollup") if ":" in l)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024
if {impl!r} == "list":
    import os
    from dataloaders.lpr4m import read_training_tsv
    from dataloaders.records import TrainPair
    r = os.path.abspath({data!r})
    pairs = [TrainPair(c, [os.path.join(r, p) for p in f], i, os.path.join(r, ip))
             for c, f, i, ip in read_training_tsv(Path({tsv!r}))]
else:
    from dataloaders.annotations import open_train_store
    from dataloaders.img2dataset_index import open_img2dataset_index
    index = open_img2dataset_index({index!r}, mode={mode!r}) if {index!r} else None
    pairs = open_train_store(Path({tsv!r}), {data!r}, index, mode={mode!r})
class Probe(Dataset):
    def __len__(self): return len(pairs)
    def __getitem__(self, chunk):
        if isinstance(chunk, str): return uss_mb()
        return sum(sum(map(len, p.frame_paths)) + len(p.image_path) for p in (pairs[int(i)] for i in chunk))
order = np.random.default_rng(0).integers(0, len(pairs), {samples})
chunks = ["uss"] + [order[k:k + 1000].tolist() for k in range(0, len(order), 1000)] + ["uss"]
out = list(DataLoader(Probe(), batch_size=None, sampler=chunks, num_workers=1))
print(json.dumps({{"before": out[0], "after": out[-1], "frames": int(sum(out[1:-1]))}}))
"""


def child(code: str, **fields) -> dict:
    result = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), **fields)], capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=100_000)
    p.add_argument("--frames", type=int, default=118, help="frames per clip")
    p.add_argument("--layout", choices=["release", "img2dataset"], default="release")
    p.add_argument("--impl", choices=["store", "list"], default="store", help="list: the list parser")
    p.add_argument("--mode", choices=["pread", "mmap"], default="pread", help="how the worker reads columns")
    p.add_argument("--samples", type=int, default=100_000, help="samples the DataLoader worker reads")
    p.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    args = p.parse_args(argv)
    if args.impl == "list" and args.layout != "release":
        p.error("--impl list measures the release layout")
    folder = Path(tempfile.mkdtemp(prefix="bench_data_scale_", dir=args.workdir))
    try:
        t = time.perf_counter()
        tsv, index = generate(folder, args.clips, args.frames, args.layout)
        sizes = f"annotation {tsv.stat().st_size / 1e9:.2f} GB" + (
            f", index {index.stat().st_size / 1e9:.2f} GB" if index else "")
        print(f"generated {args.clips} clips x {args.frames} frames ({args.layout}, {sizes}) "
              f"in {time.perf_counter() - t:.0f} s", flush=True)
        fields = dict(tsv=str(tsv), data=str(folder), index=str(index) if index else "", impl=args.impl,
                      mode=args.mode, samples=min(args.samples, args.clips * 10))
        convert = child(CONVERT, **fields)
        if args.impl == "list":
            load = {"s": convert["s"], "rss_mb": convert["peak_mb"]}
        else:
            stores = [d for d in folder.rglob("*.store") if d.is_dir()]
            size = sum(f.stat().st_size for d in stores for f in d.iterdir())
            print(f"converted {convert['n']} pairs in {convert['s']:.1f} s; stores on disk {size / 1e9:.2f} GB",
                  flush=True)
            load = child(LOAD, **fields)
            print(f"loaded: {load['frames0']} frames in item 0, e.g. {load['first']}", flush=True)
        worker = child(WORKER, **fields)
        print(f"worker USS {worker['before']:.1f} MB before, {worker['after']:.1f} MB after "
              f"{fields['samples']} samples ({worker['frames']} path characters read), mode {args.mode}", flush=True)
        print(f"clips={args.clips} convert_s={convert['s']:.1f} convert_peak_mb={convert['peak_mb']:.0f} "
              f"load_s={load['s']:.2f} load_rss_mb={load['rss_mb']:.0f} "
              f"worker_private_mb={worker['after'] - worker['before']:.1f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
