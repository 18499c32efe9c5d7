"""Benchmark the ranking stage (utils.eval.metrics) at the real test-set scales.

Random 512-d unit features stand in for encoder outputs:
  lpr4m:         20,079 queries over 110 livestreams, 66,358 gallery images,
                 each query ranked only against its livestream's gallery;
  movingfashion: one global gallery of 14,000 images (some ids duplicated),
                 14,000 queries by default (--mf_queries).
Each scenario runs in a fresh process and reports the ranking time and the
peak resident memory it added on top of the features themselves.

    python benchmarks/bench_ranking.py [--scenario lpr4m|movingfashion|all]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.eval.metrics import first_hit_ranks, rank_gallery, recall_at_k  # noqa: E402


def unit_features(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_scenario(name: str, mf_queries: int, dim: int = 512) -> None:
    rng = np.random.default_rng(0)
    if name == "lpr4m":
        num_queries, num_gallery, num_groups = 20_079, 66_358, 110
        gallery_groups = [f"live{g}" for g in np.sort(rng.integers(0, num_groups, num_gallery))]
        query_groups = [f"live{g}" for g in rng.integers(0, num_groups, num_queries)]
        gallery_ids = [f"img{i}" for i in range(num_gallery)]
    else:
        num_queries, num_gallery = mf_queries, 14_000
        query_groups = gallery_groups = None
        gallery_ids = [f"img{i}" for i in rng.integers(0, 13_000, num_gallery)]
    queries = torch.from_numpy(unit_features(rng, num_queries, dim))
    gallery = torch.from_numpy(unit_features(rng, num_gallery, dim))
    gts = [[gallery_ids[i]] for i in rng.integers(0, num_gallery, num_queries)]

    base = current_rss_mb()
    start = time.perf_counter()
    ranking = rank_gallery(queries, gallery, gallery_ids, 10, query_groups, gallery_groups)
    rank_s = time.perf_counter() - start
    metrics = recall_at_k(first_hit_ranks(ranking, gallery_ids, gts), depth=10)
    total_s = time.perf_counter() - start
    print(
        f"{name:14s} queries={num_queries} gallery={num_gallery} threads={torch.get_num_threads()} "
        f"rank={rank_s:.2f}s rank+recall={total_s:.2f}s peak_extra_mem={peak_rss_mb() - base:.0f}MB "
        f"(R1={metrics['R1']:.2f}, chance-level)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["lpr4m", "movingfashion", "all"], default="all")
    parser.add_argument("--mf_queries", type=int, default=14_000, help="MovingFashion query count")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.scenario == "all":
        for name in ("lpr4m", "movingfashion"):  # one fresh process each: clean peak memory
            extra = ["--mf_queries", str(args.mf_queries), "--threads", str(args.threads)]
            subprocess.run([sys.executable, __file__, "--scenario", name, *extra], check=True)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        run_scenario(args.scenario, args.mf_queries)


if __name__ == "__main__":
    main()
