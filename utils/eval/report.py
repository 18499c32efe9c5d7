"""What an evaluation leaves on disk, and the table it prints.

In --output_dir:
  metrics.json    R1/R3/R5/R10 (percent over ALL queries) of the final ranking,
                  the embedding-only and (when run) PMD re-ranked metrics, the
                  query/gallery counts, the checkpoint and the flags. No
                  timestamps: two runs of the same command give the same bytes.
  rankings.jsonl  one line per query, in test-set order:
                  {"query_id", "gt", "missing", "ranking": [{"image_id", "score"
                  (embedding cosine), "pmd_score" (re-ranked entries only)}, ...]}
                  best first, at least the top 10.
  skipped_files.txt  every file that could not be read, one per line:
                  "<kind>\t<path>" (kind: gallery images, query frames); written
                  only when there are some.
  features.npz    with --save_features: query_ids, query_features [Q, D],
                  query_valid [Q], gallery_ids, gallery_groups, gallery_features
                  [G, D], gallery_valid [G] (L2-normalised float32; rows of
                  missing queries are 0, rows of unreadable images are not
                  meaningful).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloaders.records import RetrievalSplit
from utils.eval.retrieval import Retrieval

SCORE_DECIMALS = 6  # scores in rankings.jsonl


@dataclass
class Outcome:
    """One evaluation, as it is written to disk."""

    split: RetrievalSplit
    found: Retrieval
    info: dict  # dataset, checkpoint, checkpoint_format, video_pooling
    flags: dict  # the resolved command line
    save_features: bool = False


def write_outputs(out_dir: Path, outcome: Outcome) -> dict:
    """Write metrics.json, rankings.jsonl and (with save_features) features.npz; return the metrics."""
    split, found = outcome.split, outcome.found
    results, ranking, pmd = found.results, found.ranking, found.pmd
    counts = {
        "num_queries": len(split.queries),
        "num_missing_queries": int((~found.query_ok).sum()),
        "num_gallery_images": len(split.gallery),
        "num_missing_gallery_images": int((~found.usable).sum()),
        **{f"num_unreadable_{kind.replace(' ', '_')}": len(paths) for kind, paths in found.unreadable.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = out_dir / "skipped_files.txt"
    if any(found.unreadable.values()):
        skipped.write_text("".join(f"{kind}\t{path}\n" for kind, paths in found.unreadable.items() for path in paths))
    elif skipped.exists():
        skipped.unlink()  # left by an earlier evaluation into this folder
    final = "reranked" if "reranked" in results else "embedding"
    metrics = {**results[final], **counts, "ranking": "pmd_rerank" if final == "reranked" else "embedding",
               **results, **outcome.info, "flags": dict(sorted(outcome.flags.items()))}
    if final == "reranked":
        metrics["rerank_topk"] = outcome.flags["rerank_topk"]
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    gallery_ids = [g.image_id for g in split.gallery]
    with open(out_dir / "rankings.jsonl", "w") as f:
        for q, query in enumerate(split.queries):
            entries = []
            for position, (index, score) in enumerate(zip(ranking.indices[q], ranking.scores[q])):
                if index < 0:
                    break
                entry = {"image_id": gallery_ids[index], "score": round(float(score), SCORE_DECIMALS)}
                if pmd is not None and not math.isnan(pmd[q, position]):
                    entry["pmd_score"] = round(float(pmd[q, position]), SCORE_DECIMALS)
                entries.append(entry)
            line = {"query_id": query.query_id, "gt": list(query.gt), "missing": not entries, "ranking": entries}
            f.write(json.dumps(line) + "\n")

    if outcome.save_features:
        np.savez(
            out_dir / "features.npz",
            query_ids=np.array([q.query_id for q in split.queries]),
            query_features=found.query_feats.numpy().astype(np.float32),
            query_valid=found.query_ok.numpy(),
            gallery_ids=np.array(gallery_ids),
            gallery_groups=np.array([g.group for g in split.gallery]),
            gallery_features=found.gallery_feats.numpy().astype(np.float32),
            gallery_valid=np.asarray(found.usable, bool),
        )
    return metrics


def read_metrics(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.json").read_text())


def print_table(metrics: dict) -> None:
    """A small fixed-width table of the results."""
    rows = [("embedding", metrics["embedding"])]
    if "reranked" in metrics:
        rows.append((f"PMD re-rank top-{metrics['rerank_topk']}", metrics["reranked"]))
    ks = list(metrics["embedding"])
    width = max(len(name) for name, _ in rows) + 2
    print(f"\n{metrics['dataset']}  {metrics['checkpoint']} ({metrics['checkpoint_format']})")
    print("ranking".ljust(width) + "".join(k.rjust(8) for k in ks))
    for name, values in rows:
        print(name.ljust(width) + "".join(f"{values[k]:8.2f}" for k in ks))
    print(
        f"{metrics['num_queries']} queries ({metrics['num_missing_queries']} without frames, counted as misses), "
        f"{metrics['num_gallery_images']} gallery images ({metrics['num_missing_gallery_images']} unreadable)"
    )
    counts = [(kind, metrics.get(f"num_unreadable_{kind}", 0)) for kind in ("query_frames", "gallery_images")]
    if any(n for _, n in counts):
        print("unreadable files: " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts)
              + " (listed in skipped_files.txt)")
    print()
