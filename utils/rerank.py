"""Re-rank each query's embedding top-K with the PMD pair score (SPEC §2).

The released checkpoints were evaluated by embedding cosine only; PMD pair
scoring at test time was left unfinished in both releases. This is a
tractable version: only the K best gallery images of each query (by
embedding) are scored by the pairwise matching decoder.

Memory is bounded by the block size, not by the test set: queries are taken
in blocks of `block_size`; for a block we encode the tokens of its clips and
of the gallery images that appear in its top-K lists (at most
block_size x K images), then score the (query, candidate) pairs in chunks of
`pair_chunk`. Blocks are dealt round-robin to the processes and the scores
gathered by query index, so the result does not depend on the process count.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from utils.features import Runtime, gather_by_index
from utils.metrics import Ranking


@torch.no_grad()
def pmd_scores(
    model,
    ranking: Ranking,
    topk: int,
    clips: Dataset,
    images: Dataset,
    image_of_gallery: np.ndarray,
    runtime: Runtime,
    collate_fn,
    block_size: int = 32,
    pair_chunk: int = 64,
) -> np.ndarray:
    """PMD scores of every query's first `topk` ranked gallery entries.

    Args:
        model: a RICEModel with the PMD head (`score_pairs`).
        ranking: embedding ranking, [Q, k] gallery positions (k >= topk).
        clips: query dataset (ClipDataset), item i = query i.
        images: dataset of the distinct gallery images (ImageDataset).
        image_of_gallery: [G] which item of `images` each gallery position is.
    Returns:
        [Q, topk] float32 raw PMD scores aligned with ranking.indices[:, :topk];
        NaN where the ranking has no entry (missing query, small gallery).
    """
    num_queries = len(ranking.indices)
    candidates = ranking.indices[:, :topk]
    blocks = [np.arange(s, min(s + block_size, num_queries)) for s in range(0, num_queries, block_size)]
    mine = blocks[runtime.rank :: runtime.world_size]
    device = runtime.device
    done, scores = [], []
    bar = tqdm(mine, desc="PMD re-ranking", unit="block", disable=not (runtime.progress and runtime.is_main))
    for block in bar:
        out = np.full((len(block), topk), np.nan, np.float32)
        rows = [r for r in range(len(block)) if candidates[block[r], 0] >= 0]
        if rows:
            queries = block[rows]
            # Distinct gallery images this block needs, and where each pair's image sits.
            cand = candidates[queries]  # [b, topk], -1 for absent entries
            present = cand >= 0
            needed, pair_image = np.unique(image_of_gallery[cand[present]], return_inverse=True)
            pair_query = np.nonzero(present)[0]  # row in `queries` of every pair
            with runtime.autocast():
                batch = collate_fn([clips[int(q)] for q in queries])
                _, video_tokens, video_mask = model.encode_videos(
                    batch["frames"].to(device), batch["frame_mask"].to(device), return_tokens=True
                )
                image_batch = collate_fn([images[int(i)] for i in needed])
                _, image_tokens = model.encode_images(image_batch["image"].to(device), return_tokens=True)
                pair_scores = []
                for start in range(0, len(pair_query), pair_chunk):
                    q = torch.from_numpy(pair_query[start : start + pair_chunk]).to(device)
                    i = torch.from_numpy(pair_image[start : start + pair_chunk]).to(device)
                    pair_scores.append(model.score_pairs(image_tokens[i], video_tokens[q], video_mask[q]).float())
            values = torch.cat(pair_scores).cpu().numpy()
            block_out = np.full(cand.shape, np.nan, np.float32)
            block_out[present] = values
            out[rows] = block_out
        done.append(torch.from_numpy(block))
        scores.append(torch.from_numpy(out))
    index = torch.cat(done) if done else torch.empty(0, dtype=torch.int64)
    values = torch.cat(scores) if scores else torch.empty(0, topk)
    return gather_by_index(index, values, num_queries, runtime).numpy()


def rerank(ranking: Ranking, pmd: np.ndarray) -> tuple[Ranking, np.ndarray]:
    """Reorder each query's first K entries by PMD score (best first).

    Equal PMD scores keep their embedding order; entries after the first K
    keep their place. Returns the new ranking (scores stay embedding cosines)
    and the PMD scores aligned with it (NaN after the first K).
    """
    topk = pmd.shape[1]
    indices, scores = ranking.indices.copy(), ranking.scores.copy()
    aligned = np.full(indices.shape, np.nan, np.float32)
    for q in range(len(indices)):
        present = np.flatnonzero(indices[q, :topk] >= 0)
        order = present[np.argsort(-pmd[q, present], kind="stable")]
        indices[q, : len(order)] = ranking.indices[q, order]
        scores[q, : len(order)] = ranking.scores[q, order]
        aligned[q, : len(order)] = pmd[q, order]
    return Ranking(indices, scores), aligned
