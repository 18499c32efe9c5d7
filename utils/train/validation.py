"""Validation during training: retrieval R1/R5/R10 on the VALIDATION split, never the test split.

The split itself (per-livestream galleries, as the LPR4M test protocol) comes
from the dataset registry (`DatasetSpec.load_validation`).
"""

from __future__ import annotations

from dataloaders.records import RetrievalSplit
from utils.eval.retrieval import retrieve
from utils.runtime.distributed import Runtime


def validate(model, split: RetrievalSplit, runtime: Runtime, *, max_frames: int, batch_size: int,
             num_workers: int, rerank: bool, rerank_topk: int = 5, decode: str = "exact",
             prefetch_factor: int | None = None) -> dict:
    """R1/R5/R10 (percent) by embedding and, with `rerank`, after PMD re-ranking of the top K.

    Every process of the group must call this. The model is evaluated with
    dropout off and goes back to the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        found = retrieve(model, split, runtime, max_frames=max_frames, batch_size=batch_size,
                         num_workers=num_workers, rerank_topk=rerank_topk if rerank else None, where="validation",
                         decode=decode, prefetch_factor=prefetch_factor)
    finally:
        model.train(was_training)
    keep = ("R1", "R5", "R10")
    return {name: {k: metrics[k] for k in keep} for name, metrics in found.results.items()}
