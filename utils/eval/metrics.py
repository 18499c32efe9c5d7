"""Top-k ranking of gallery images for each query, and recall@k.

Retrieval here is cosine similarity between L2-normalised query (video) and
gallery (image) embeddings. Two settings (docs/evaluation.md):

* per group (LPR4M): a query is ranked only against the gallery images of its
  own livestream (`group` = live_id);
* global (MovingFashion): one gallery for every query (all groups equal "").

Gallery images that share an id (the same product listed twice) are collapsed
into one entry scored by the best of its copies, so a product can never take
two top-k slots. The entry points at the first copy in gallery order.

The ranking is exact and deterministic: equal scores are ordered by gallery
position, whatever the hardware's `topk` does with ties. Memory is bounded by
`chunk_size x (largest gallery)` scores, independent of the number of queries.

Recall@k is in percent over ALL queries: a query without features (its
frames are missing) has an empty ranking and counts as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_KS = (1, 3, 5, 10)


@dataclass
class Ranking:
    """Top-k gallery entries of every query, best first.

    indices: [Q, k] int64 positions in the gallery (the first copy of each
        product id); -1 pads rows with fewer entries (missing query, or a
        gallery smaller than k).
    scores:  [Q, k] float32 cosine similarities; NaN where `indices` is -1.
    """

    indices: np.ndarray
    scores: np.ndarray

    def row(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """Valid (indices, scores) of query q, best first."""
        keep = self.indices[q] >= 0
        return self.indices[q][keep], self.scores[q][keep]


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every row, ties broken by column order (lower column first).

    Args:
        scores: [R, C] float, no NaN.
        k: 1 <= k <= C.
    Returns:
        values [R, k] and column indices [R, k], best first.

    `torch.topk` picks a correct set of k columns, but which of several equal
    values at the k-th place it keeps is unspecified. Rows with such a tie at
    the boundary are redone exactly: every entry above the k-th value t is in,
    and the remaining slots go to the leftmost entries equal to t. Finally the
    k columns are put in ascending order and stably sorted by value, so equal
    values inside the top k stay in column order too.
    """
    rows, cols = scores.shape
    if not 1 <= k <= cols:
        raise ValueError(f"k={k} must be between 1 and the number of columns ({cols})")
    # One more than needed: a row has a tie at the boundary exactly when its
    # (k+1)-th largest value equals its k-th (cheaper than a pass over the row).
    values, columns = scores.topk(min(k + 1, cols), dim=1)
    tied = (values[:, k] == values[:, k - 1]).nonzero().flatten() if k < cols else columns.new_empty(0)
    values, columns = values[:, :k], columns[:, :k]
    threshold = values[:, -1:]  # [R, 1] the k-th largest value
    if len(tied):
        t_scores, t_threshold = scores[tied], threshold[tied]
        above, ties = t_scores > t_threshold, t_scores == t_threshold
        free_slots = k - above.sum(dim=1, keepdim=True)
        chosen = above | (ties & (ties.cumsum(dim=1) <= free_slots))  # exactly k per row
        columns[tied] = chosen.nonzero()[:, 1].view(len(tied), k)
    columns = columns.sort(dim=1).values
    values, order = scores.gather(1, columns).sort(dim=1, descending=True, stable=True)
    return values, columns.gather(1, order)


def _collapse_duplicates(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Number the distinct ids of a gallery in order of first appearance.

    Returns:
        key_of_image [G]: the number of each image's id.
        first_image [K]: gallery position of the first copy of each id.
    """
    numbers: dict[str, int] = {}
    key_of_image = np.fromiter((numbers.setdefault(i, len(numbers)) for i in ids), np.int64, len(ids))
    # Keys are numbered by first appearance, so np.unique's first indices line up with them.
    first_image = np.unique(key_of_image, return_index=True)[1]
    return key_of_image, first_image


def rank_gallery(
    query_features: torch.Tensor | np.ndarray,
    gallery_features: torch.Tensor | np.ndarray,
    gallery_ids: Sequence[str],
    k: int = 10,
    query_groups: Sequence[str] | None = None,
    gallery_groups: Sequence[str] | None = None,
    valid_queries: np.ndarray | None = None,
    chunk_size: int = 1024,
) -> Ranking:
    """Rank the gallery for every query by cosine similarity.

    Args:
        query_features: [Q, D] L2-normalised query embeddings.
        gallery_features: [G, D] L2-normalised gallery embeddings.
        gallery_ids: G product ids; copies of one id are collapsed (max score).
        k: entries kept per query.
        query_groups, gallery_groups: Q and G group names (LPR4M: live_id).
            Both given: each query is ranked only against its group's gallery.
            Both None: one global gallery.
        valid_queries: [Q] bool, False for queries without features (their
            rows are ignored and get an empty ranking). Default: all valid.
        chunk_size: queries scored at once; bounds memory to
            chunk_size x (largest group's gallery) floats.
    Returns:
        Ranking with [Q, k] indices into the gallery and their scores.
    """
    queries = torch.as_tensor(query_features).float()
    gallery = torch.as_tensor(gallery_features).float()
    num_queries, num_gallery = len(queries), len(gallery)
    if len(gallery_ids) != num_gallery:
        raise ValueError(f"{len(gallery_ids)} gallery ids for {num_gallery} gallery features")
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("give both query_groups and gallery_groups (per-group ranking) or neither (global)")
    valid = np.ones(num_queries, bool) if valid_queries is None else np.asarray(valid_queries, bool)
    if not torch.isfinite(gallery).all() or not torch.isfinite(queries[torch.from_numpy(valid)]).all():
        raise ValueError("query or gallery features contain NaN or inf; check the checkpoint and --precision")

    # Gallery positions and valid query positions of every group, in input order.
    if query_groups is None:
        groups = {"": (np.arange(num_gallery), np.flatnonzero(valid))}
    else:
        gallery_of: dict[str, list[int]] = {}
        for position, group in enumerate(gallery_groups):
            gallery_of.setdefault(group, []).append(position)
        queries_of: dict[str, list[int]] = {}
        for position in np.flatnonzero(valid):
            queries_of.setdefault(query_groups[position], []).append(position)
        groups = {g: (np.asarray(gallery_of.get(g, []), np.int64), np.asarray(q)) for g, q in queries_of.items()}

    indices = np.full((num_queries, k), -1, np.int64)
    scores = np.full((num_queries, k), np.nan, np.float32)
    for gallery_positions, query_positions in groups.values():
        if len(gallery_positions) == 0:
            continue  # a shop without gallery images: its queries stay misses
        key_of_image, first_image = _collapse_duplicates([gallery_ids[i] for i in gallery_positions])
        # First copies are scored directly; the other copies (usually few or
        # none) are folded into their id's column with a max.
        is_copy = np.ones(len(gallery_positions), bool)
        is_copy[first_image] = False
        firsts = gallery[torch.from_numpy(gallery_positions[first_image])]  # [K, D]
        copies = gallery[torch.from_numpy(gallery_positions[is_copy])]  # [G_group - K, D]
        copy_keys = torch.from_numpy(key_of_image[is_copy])
        top = min(k, len(first_image))
        for start in range(0, len(query_positions), chunk_size):
            rows = query_positions[start : start + chunk_size]
            chunk = queries[torch.from_numpy(rows)]
            sims = chunk @ firsts.T  # [c, K]
            if len(copies):
                sims.scatter_reduce_(1, copy_keys.expand(len(rows), -1), chunk @ copies.T, reduce="amax")
            values, columns = stable_topk(sims, top)
            indices[rows, :top] = gallery_positions[first_image[columns.numpy()]]
            scores[rows, :top] = values.numpy()
    return Ranking(indices, scores)


def first_hit_ranks(ranking: Ranking, gallery_ids: Sequence[str], gts: Sequence[Sequence[str]]) -> np.ndarray:
    """[Q] 1-based rank of the first ground-truth id in each ranking, 0 if absent."""
    if len(gts) != len(ranking.indices):
        raise ValueError(f"{len(gts)} ground-truth lists for {len(ranking.indices)} ranked queries")
    ranks = np.zeros(len(gts), np.int64)
    for q, gt in enumerate(gts):
        if not gt:
            raise ValueError(f"query {q} has no ground truth; drop such queries before scoring")
        targets = set(gt)
        for position, index in enumerate(ranking.indices[q]):
            if index >= 0 and gallery_ids[index] in targets:
                ranks[q] = position + 1
                break
    return ranks


def recall_at_k(first_hit: np.ndarray, ks: Sequence[int] = DEFAULT_KS, depth: int | None = None) -> dict[str, float]:
    """Recall@k in percent over all queries: {"R1": ..., "R3": ..., ...}.

    Args:
        first_hit: [Q] output of `first_hit_ranks` (0 = miss, including
            queries without features).
        depth: how many entries each ranking kept; asking for k > depth is an
            error, since hits below the kept entries are unknown.
    """
    if depth is not None and max(ks) > depth:
        raise ValueError(f"recall@{max(ks)} needs rankings of depth >= {max(ks)}, got {depth}")
    if len(first_hit) == 0:
        raise ValueError("no queries to score")
    hit = np.asarray(first_hit)
    return {f"R{k}": round(100.0 * float(((hit >= 1) & (hit <= k)).sum()) / len(hit), 4) for k in ks}
