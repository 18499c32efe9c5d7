"""Retrieval on one split with an in-memory model: encode, rank, optionally re-rank with PMD.

Used by the evaluation command lines (utils/eval/cli.py) and by validation
during training (utils/train/validation.py). Steps (docs/evaluation.md):
  1. encode every distinct gallery image and every query clip once, split
     over the processes (utils/eval/features.py);
  2. rank each query's gallery by embedding cosine (utils/eval/metrics.py):
     per livestream for LPR4M, one global gallery for MovingFashion;
  3. optionally re-rank each query's top-K with the PMD pair score
     (utils/eval/rerank.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dataloaders.datasets import ClipDataset, ImageDataset
from dataloaders.records import GalleryImage, RetrievalSplit
from dataloaders.transforms import build_transform
from modules.rice import RICEModel
from utils.errors import ConfigError, DataError
from utils.eval.features import extract_features
from utils.eval.metrics import Ranking, first_hit_ranks, rank_gallery, recall_at_k
from utils.eval.rerank import RerankInputs, pmd_scores, rerank
from utils.runtime.distributed import Runtime

RANKING_DEPTH = 10  # rankings keep at least the top 10 (R10)


@dataclass
class Retrieval:
    """What `retrieve` found: metrics and ranking, plus the features behind them."""

    results: dict  # {"embedding": {"R1": ..}, ["reranked": {..}]} in percent
    ranking: Ranking  # final ranking (re-ranked when PMD re-ranking ran)
    pmd: np.ndarray | None  # PMD scores aligned with the ranking, or None
    query_feats: torch.Tensor  # [Q, E]
    query_ok: torch.Tensor  # [Q] bool: the query had a readable frame
    gallery_feats: torch.Tensor  # [G, E], one row per gallery entry
    usable: np.ndarray  # [G] bool: the gallery image could be read
    unreadable: dict[str, list[str]]  # {"gallery images": [...], "query frames": [...]}: files that could not be read


@torch.no_grad()
def retrieve(model: RICEModel, split: RetrievalSplit, runtime: Runtime, *, max_frames: int, batch_size: int,
             num_workers: int, rerank_topk: int | None = None, where: str = "",
             decode: str = "exact", prefetch_factor: int | None = None) -> Retrieval:
    """Encode a split's queries and gallery, rank, and optionally re-rank the top K with PMD.

    Runs in every process of the group (the encoding is split between them);
    the results are the same on all. Pass the model in eval mode (dropout
    off). The preprocessing is the one the model was trained or released with
    (`RICEConfig.preprocessing`), decoded as `decode` says (exact: whole images,
    PIL resize; dataloaders/transforms.py). `prefetch_factor`: batches each loading worker prepares ahead.
    `where` names the data in error messages.
    """
    config = model.config
    transform = build_transform(config.preprocessing, train=False, image_size=config.vision.image_size,
                                decode=decode)
    # Encode each distinct image file once, whatever the galleries that list it.
    image_number: dict[str, int] = {}
    image_of_gallery = np.array([image_number.setdefault(g.path, len(image_number)) for g in split.gallery])
    images = ImageDataset([GalleryImage("", path, "") for path in image_number], transform)
    clips = ClipDataset(split.queries, transform, max_frames=max_frames)
    device = runtime.device

    def encode_images(batch):
        emb, _ = model.encode_images(batch["image"].to(device))
        return emb, batch["ok"]

    def encode_clips(batch):
        mask = batch["frame_mask"]  # the host copy: the valid frames are found there, no device wait
        emb, _, _ = model.encode_videos(batch["frames"].to(device), mask)
        return emb, mask.any(dim=1)

    image_feats, image_ok, bad_images = extract_features(images, encode_images, runtime,
                                                         batch_size=batch_size * max_frames, num_workers=num_workers,
                                                         desc="gallery", prefetch_factor=prefetch_factor)
    query_feats, query_ok, bad_frames = extract_features(clips, encode_clips, runtime, batch_size=batch_size,
                                                         num_workers=num_workers, desc="queries",
                                                         prefetch_factor=prefetch_factor)
    unreadable = {"gallery images": bad_images, "query frames": bad_frames}
    _report_unreadable(unreadable, int((~query_ok).sum()), runtime, where)

    if not (torch.isfinite(image_feats[image_ok]).all() and torch.isfinite(query_feats[query_ok]).all()):
        raise ConfigError(f"features contain NaN or inf with --precision {runtime.precision}; try --precision fp32")
    gallery_feats = image_feats[image_of_gallery]
    usable = image_ok.numpy()[image_of_gallery]  # unreadable gallery images cannot be retrieved
    gallery_ids = [g.image_id for g in split.gallery]
    kept = np.flatnonzero(usable)
    if len(kept) == 0:
        raise DataError(f"{where}: none of the {len(split.gallery)} gallery images could be read")
    per_group = split.per_group
    depth = max(RANKING_DEPTH, rerank_topk or 0)
    ranking = rank_gallery(
        query_feats,
        gallery_feats[torch.from_numpy(kept)],
        [gallery_ids[i] for i in kept],
        k=depth,
        query_groups=[q.group for q in split.queries] if per_group else None,
        gallery_groups=[split.gallery[i].group for i in kept] if per_group else None,
        valid_queries=query_ok.numpy(),
    )
    ranking.indices = np.where(ranking.indices >= 0, kept[np.maximum(ranking.indices, 0)], -1)
    if per_group:
        shops = {split.gallery[i].group for i in kept}
        orphans = sum(q.group not in shops for q in split.queries)
        if orphans:
            runtime.log(f"note: {orphans} queries have no readable gallery image in their livestream (misses)")
    gts = [q.gt for q in split.queries]
    results = {"embedding": recall_at_k(first_hit_ranks(ranking, gallery_ids, gts), depth=RANKING_DEPTH)}

    pmd = None
    if rerank_topk:
        raw = pmd_scores(model, ranking, rerank_topk, RerankInputs(clips, images, image_of_gallery), runtime,
                         num_workers=num_workers)
        ranking, pmd = rerank(ranking, raw)
        results["reranked"] = recall_at_k(first_hit_ranks(ranking, gallery_ids, gts), depth=RANKING_DEPTH)
    return Retrieval(results, ranking, pmd, query_feats, query_ok, gallery_feats, usable, unreadable)


def _report_unreadable(unreadable: dict[str, list[str]], queries_without_frames: int, runtime: Runtime,
                       where: str, examples: int = 3) -> None:
    """One line per kind of unreadable file, with the first few names (the full lists go to the outputs)."""
    for kind, paths in unreadable.items():
        if paths:
            runtime.log(f"note: {where}: {len(paths)} {kind} could not be read (missing, truncated, not an image "
                        f"or too large), e.g. {', '.join(paths[:examples])}")
    if queries_without_frames:
        runtime.log(f"note: {where}: {queries_without_frames} queries have no readable frame (counted as misses)")
