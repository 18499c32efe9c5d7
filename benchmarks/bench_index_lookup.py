"""img2dataset index: sorted numpy arrays (the store) against SQLite, on the same ids.

    python benchmarks/bench_index_lookup.py --clips 10000 --frames 118     # 1.18M frame ids + images

Writes an index TSV (frame ids `<clip_id>-NNNN`, one image id per 5 clips), then, each in a
fresh process: builds the store (`open_img2dataset_index`) and an SQLite table
(`id TEXT PRIMARY KEY, root, rel` WITHOUT ROWID, filled by executemany from the parsed
lines); reports build time, peak RSS, size on disk, open time, and lookups: a clip's 118
ids as strings (one query per clip; SQLite `WHERE id IN (...)`), and for the store also
the vectorised path the annotation build uses (4096 clips per call). Prints one line per
method; not a test.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = """
import json, os, random, resource, sqlite3, sys, time
sys.path.insert(0, {root!r})
import numpy as np
clips, frames, folder = {clips}, {frames}, {folder!r}
def clip_id(c):
    start = (c % 50) * 40000
    return f"{{c // 50:08x}}-1c2d-4e5f-8a9b-{{c % 7919:012x}}-{{start}}-{{start + 1000 * frames}}"
rng = random.Random(0)
sample = [rng.randrange(clips) for _ in range(2000)]
queries = [[f"{{clip_id(c)}}-{{k:04d}}" for k in range(frames)] for c in sample]
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
"""

STORE = COMMON + """
from dataloaders.img2dataset_index import open_img2dataset_index, split_id
t = time.perf_counter()
index = open_img2dataset_index(os.path.join(folder, "index.tsv"))
build = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
del index
t = time.perf_counter()
index = open_img2dataset_index(os.path.join(folder, "index.tsv"))
opened = time.perf_counter() - t
t = time.perf_counter()
found = sum(len(index.paths(r[r >= 0])) for r in (index.lookup_ids(q) for q in queries))
per_clip = (time.perf_counter() - t) / len(queries)
prefixes = [q[0][:-5].encode() for q in queries] * 2
numbers = np.tile(np.arange(frames), len(prefixes))
t = time.perf_counter()
rows = index.lookup(prefixes, numbers, np.full(len(prefixes), frames))
vec = time.perf_counter() - t
size = sum(f.stat().st_size for f in index.folder.iterdir())
print(json.dumps(dict(method="sorted arrays", build_s=build, peak_mb=peak, disk_mb=size / 1e6,
                      open_s=opened,
                      us_per_clip=per_clip * 1e6, vectorised_us_per_id=vec / len(rows) * 1e6,
                      found=found, rss_mb=rss())))
"""

SQLITE = COMMON + """
db_path = os.path.join(folder, "index.sqlite")
t = time.perf_counter()
db = sqlite3.connect(db_path)
db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                 "CREATE TABLE ids (id TEXT PRIMARY KEY, root INTEGER, rel TEXT) WITHOUT ROWID;")
roots = {{}}
def rows():
    with open(os.path.join(folder, "index.tsv"), encoding="utf-8") as f:
        for line in f:
            key, root, rel = line.rstrip("\\n").split("\\t")
            if key == "#root":
                roots[root] = rel
            else:
                yield key, int(root), rel
db.executemany("INSERT OR REPLACE INTO ids VALUES (?, ?, ?)", rows())
db.commit(); db.close()
build = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
db = sqlite3.connect(f"file:{{db_path}}?mode=ro", uri=True)
db.execute("SELECT 1 FROM ids LIMIT 1")
opened = time.perf_counter() - t
root_list = {{"0": os.path.join(folder, "frames"), "1": os.path.join(folder, "images")}}
t = time.perf_counter()
found = 0
sql = "SELECT id, root, rel FROM ids WHERE id IN (" + ",".join("?" * frames) + ")"
for q in queries:
    got = {{k: os.path.join(root_list[str(r)], p) for k, r, p in db.execute(sql, q)}}
    found += len([got[k] for k in q if k in got])
per_clip = (time.perf_counter() - t) / len(queries)
print(json.dumps(dict(method="sqlite", build_s=build, peak_mb=peak, disk_mb=os.path.getsize(db_path) / 1e6,
                      open_s=opened, us_per_clip=per_clip * 1e6, found=found, rss_mb=rss())))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=10_000)
    p.add_argument("--frames", type=int, default=118)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_data_scale import generate

    folder = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        _, index = generate(folder, args.clips, args.frames, "img2dataset")
        lines = sum(1 for _ in open(index, "rb")) - 2
        print(f"{lines} ids in {index.stat().st_size / 1e6:.0f} MB of TSV", flush=True)
        for code in (STORE, SQLITE):
            out = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), clips=args.clips,
                                                                  frames=args.frames, folder=str(folder))],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            extra = f" vectorised {r['vectorised_us_per_id']:.2f} us/id" if "vectorised_us_per_id" in r else ""
            print(f"{r['method']:>13}: build {r['build_s']:.1f} s, peak {r['peak_mb']:.0f} MB, disk "
                  f"{r['disk_mb']:.0f} MB, open {r['open_s'] * 1e3:.1f} ms, {r['us_per_clip']:.0f} us per "
                  f"{args.frames}-id clip{extra}, rss {r['rss_mb']:.0f} MB, found {r['found']}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
