"""Re-rank each query's embedding top-K with the PMD pair score (docs/evaluation.md).

The released checkpoints were evaluated by embedding cosine only; PMD pair
scoring at test time was left unfinished in both releases. This is a
tractable version: only the K best gallery images of each query (by
embedding) are scored by the pairwise matching decoder.

Memory is bounded by the block size, not by the test set: queries are taken
in blocks of BLOCK_SIZE; for a block we encode the tokens of its clips and
of the gallery images that appear in its top-K lists (at most
BLOCK_SIZE x K images), run the decoder's video side once per clip and its
image side once per image, then decode the (query, candidate) pairs
`--pmd_chunk_size` at a time (`RICEModel.score_pairs`). Blocks load in DataLoader workers; they are dealt round-robin
to the processes and the scores gathered by query index, so the result does
not depend on the process count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dataloaders.datasets import collate_samples, loader_options
from utils.eval.features import gather_by_index
from utils.eval.metrics import Ranking
from utils.runtime.distributed import Runtime

BLOCK_SIZE = 32  # queries whose clips and candidate images are loaded together


@dataclass
class RerankInputs:
    """The data a re-ranking reads: query clips, the distinct gallery images, and which image each entry is."""

    clips: Dataset  # ClipDataset, item i = query i
    images: Dataset  # ImageDataset of the distinct gallery images
    image_of_gallery: np.ndarray  # [G] which item of `images` each gallery position is


class _Blocks(Dataset):
    """Item b: the clips of query block b and the gallery images its top-K lists need.

    Loading a block (decoding up to BLOCK_SIZE x 10 frames and BLOCK_SIZE x K
    images) is the slow part; as a Dataset it runs in DataLoader workers.
    """

    def __init__(self, blocks: list[np.ndarray], candidates: np.ndarray, data: RerankInputs):
        self.blocks, self.candidates, self.data = blocks, candidates, data

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, b: int) -> dict:
        block = self.blocks[b]
        rows = np.flatnonzero(self.candidates[block, 0] >= 0)  # queries with at least one candidate
        item = {"block": block, "rows": rows}
        if len(rows):
            cand = self.candidates[block[rows]]  # [b, K], -1 for absent entries
            present = cand >= 0
            # Distinct images the block needs, and which of them each (query, candidate) pair uses.
            needed, pair_image = np.unique(self.data.image_of_gallery[cand[present]], return_inverse=True)
            item.update(
                present=present,
                pair_query=np.nonzero(present)[0],  # row (within `rows`) of every pair
                pair_image=pair_image,
                clips=collate_samples([self.data.clips[int(q)] for q in block[rows]]),
                images=collate_samples([self.data.images[int(i)] for i in needed]),
            )
        return item


def _as_is(item: dict) -> dict:
    """Keep a block as the dataset made it (numpy arrays stay numpy)."""
    return item


@torch.no_grad()
def pmd_scores(model, ranking: Ranking, topk: int, data: RerankInputs, runtime: Runtime,
               num_workers: int = 0) -> np.ndarray:
    """PMD scores of every query's first `topk` ranked gallery entries.

    Args:
        model: a RICEModel with the PMD head (`score_pairs`).
        ranking: embedding ranking, [Q, k] gallery positions (k >= topk).
        num_workers: DataLoader workers that load the blocks.
    Returns:
        [Q, topk] float32 raw PMD scores aligned with ranking.indices[:, :topk];
        NaN where the ranking has no entry (missing query, small gallery).
    """
    num_queries = len(ranking.indices)
    blocks = [np.arange(s, min(s + BLOCK_SIZE, num_queries)) for s in range(0, num_queries, BLOCK_SIZE)]
    mine = _Blocks(blocks[runtime.rank :: runtime.world_size], ranking.indices[:, :topk], data)
    loader = DataLoader(mine, batch_size=None, collate_fn=_as_is, **loader_options(num_workers))  # items: whole blocks
    device = runtime.device
    done, scores = [], []
    for item in tqdm(loader, desc="PMD re-ranking", unit="block", disable=not (runtime.progress and runtime.is_main)):
        block, rows = item["block"], item["rows"]
        out = np.full((len(block), topk), np.nan, np.float32)
        if len(rows):
            frames = item["clips"]["frames"].to(device)
            mask = item["clips"]["frame_mask"]  # stays on the host: the valid frames are found there
            pair_query, pair_image = (torch.as_tensor(item[k]).to(device) for k in ("pair_query", "pair_image"))
            with runtime.autocast():
                _, video_tokens, video_mask = model.encode_videos(frames, mask, return_tokens=True)
                _, image_tokens = model.encode_images(item["images"]["image"].to(device), return_tokens=True)
                # A query has up to `topk` pairs and an image may serve several queries: each is decoded once.
                values = model.score_pairs(image_tokens, video_tokens, video_mask, pair_query, pair_image).float()
            block_out = np.full(item["present"].shape, np.nan, np.float32)
            block_out[item["present"]] = values.cpu().numpy()
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
