"""utils.eval.metrics against a brute-force reference written here independently.

Features are small integers so every dot product is exact in float32 and ties
are real ties, whatever order the matrix product sums in.
"""

import numpy as np
import pytest
import torch

from utils.eval.metrics import Ranking, first_hit_ranks, rank_gallery, recall_at_k, stable_topk


def reference_ranking(queries, gallery, ids, k, q_groups=None, g_groups=None, valid=None):
    """Plain Python: per query, best score per id, sorted by (-score, first position)."""
    out = []
    for q in range(len(queries)):
        if valid is not None and not valid[q]:
            out.append([])
            continue
        best = {}  # id -> (score, first position)
        for g in range(len(gallery)):
            if q_groups is not None and g_groups[g] != q_groups[q]:
                continue
            score = float(np.dot(queries[q].astype(np.float64), gallery[g].astype(np.float64)))
            if ids[g] not in best:
                best[ids[g]] = (score, g)
            elif score > best[ids[g]][0]:
                best[ids[g]] = (score, best[ids[g]][1])
        ordered = sorted(best.values(), key=lambda sp: (-sp[0], sp[1]))
        out.append([(position, score) for score, position in ordered[:k]])
    return out


def reference_recall(ranked_ids, gts, k):
    hits = sum(1 for ids, gt in zip(ranked_ids, gts) if set(ids[:k]) & set(gt))
    return 100.0 * hits / len(gts)


def assert_matches(ranking: Ranking, reference):
    for q, expected in enumerate(reference):
        indices, scores = ranking.row(q)
        assert indices.tolist() == [p for p, _ in expected], f"query {q}"
        np.testing.assert_array_equal(scores, np.array([s for _, s in expected], np.float32))


def integer_features(rng, n, dim=6, low=-2, high=3):
    return rng.integers(low, high, size=(n, dim)).astype(np.float32)


def test_stable_topk_breaks_ties_by_column():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 40)).astype(np.float32)  # many ties
    for k in (1, 3, 10, 40):
        values, columns = stable_topk(torch.from_numpy(scores), k)
        for r in range(len(scores)):
            expected = sorted(range(40), key=lambda c: (-scores[r, c], c))[:k]
            assert columns[r].tolist() == expected
            assert values[r].tolist() == scores[r, expected].tolist()
    floats = rng.standard_normal((20, 300)).astype(np.float32)  # no ties: the fast path
    floats[:5, 7] = floats[:5, 3] = floats[:5].max(axis=1)  # tie at the top of 5 rows
    values, columns = stable_topk(torch.from_numpy(floats), 5)
    for r in range(len(floats)):
        assert columns[r].tolist() == sorted(range(300), key=lambda c: (-floats[r, c], c))[:5]
    with pytest.raises(ValueError, match="between 1 and"):
        stable_topk(torch.from_numpy(scores), 41)


def test_per_group_ranking_matches_brute_force():
    rng = np.random.default_rng(1)
    gallery = integer_features(rng, 60)
    queries = integer_features(rng, 40)
    # Group "c" has 3 images (fewer than k); group "d" has queries but no gallery.
    g_groups = ["a"] * 30 + ["b"] * 27 + ["c"] * 3
    q_groups = [["a", "b", "c", "d"][i % 4] for i in range(40)]
    # Duplicate product ids inside a group, and the same id in two groups.
    ids = [f"p{i % 20}" for i in range(57)] + ["p0", "x", "x"]
    valid = np.ones(40, bool)
    valid[[2, 5, 17]] = False
    queries[2] = np.nan  # a missing query's row must be ignored
    k = 10
    ranking = rank_gallery(queries, gallery, ids, k, q_groups, g_groups, valid, chunk_size=4)
    assert ranking.indices.shape == (40, k)
    assert_matches(ranking, reference_ranking(queries, gallery, ids, k, q_groups, g_groups, valid))
    # Group "d" has no gallery: empty rankings.
    assert all(len(ranking.row(q)[0]) == 0 for q in range(40) if q_groups[q] == "d")
    # Chunking does not change anything.
    whole = rank_gallery(queries, gallery, ids, k, q_groups, g_groups, valid, chunk_size=1024)
    np.testing.assert_array_equal(whole.indices, ranking.indices)


def test_global_ranking_collapses_duplicates():
    rng = np.random.default_rng(2)
    gallery = integer_features(rng, 80)
    queries = integer_features(rng, 25)
    ids = [f"img{i % 50}" for i in range(80)]  # 30 ids appear twice
    ranking = rank_gallery(torch.from_numpy(queries), torch.from_numpy(gallery), ids, k=10, chunk_size=7)
    assert_matches(ranking, reference_ranking(queries, gallery, ids, 10))
    for q in range(25):
        top_ids = [ids[i] for i in ranking.row(q)[0]]
        assert len(set(top_ids)) == len(top_ids) == 10


def test_duplicate_copy_cannot_take_two_slots():
    gallery = np.array([[1, 0], [1, 0], [0, 1], [0.5, 0.5]], np.float32)
    ids = ["shirt", "shirt", "dress", "hat"]
    ranking = rank_gallery(np.array([[1, 0]], np.float32), gallery, ids, k=3)
    assert [ids[i] for i in ranking.row(0)[0]] == ["shirt", "hat", "dress"]
    assert ranking.row(0)[0][0] == 0  # points at the first copy


def test_recall_counts_all_queries_and_several_ground_truths():
    rng = np.random.default_rng(3)
    gallery = integer_features(rng, 40)
    queries = integer_features(rng, 30)
    ids = [f"p{i % 35}" for i in range(40)]
    valid = np.ones(30, bool)
    valid[[0, 9]] = False
    gts = [[f"p{rng.integers(0, 35)}" for _ in range(rng.integers(1, 4))] for _ in range(30)]
    ranking = rank_gallery(queries, gallery, ids, k=10, valid_queries=valid)
    hits = first_hit_ranks(ranking, ids, gts)
    metrics = recall_at_k(hits, depth=10)
    ref = reference_ranking(queries, gallery, ids, 10, valid=valid)
    ranked_ids = [[ids[p] for p, _ in row] for row in ref]
    for k in (1, 3, 5, 10):
        assert metrics[f"R{k}"] == pytest.approx(reference_recall(ranked_ids, gts, k), abs=1e-4)
    assert hits[0] == 0 and hits[9] == 0  # missing queries are misses, still in the denominator


def test_recall_hand_example():
    ids = ["a", "b", "c", "d"]
    ranking = Ranking(
        indices=np.array([[1, 0, 2], [3, 2, 1], [-1, -1, -1], [0, 1, 2]]),
        scores=np.zeros((4, 3), np.float32),
    )
    gts = [["a"], ["x", "b"], ["a"], ["a", "c"]]
    hits = first_hit_ranks(ranking, ids, gts)
    assert hits.tolist() == [2, 3, 0, 1]
    assert recall_at_k(hits, ks=(1, 2, 3)) == {"R1": 25.0, "R2": 50.0, "R3": 75.0}


def test_errors_are_clear():
    feats = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="depth"):
        recall_at_k(np.array([1]), ks=(1, 10), depth=5)
    with pytest.raises(ValueError, match="no ground truth"):
        first_hit_ranks(rank_gallery(feats, feats, ["a", "b", "c"], k=2), ["a", "b", "c"], [["a"], [], ["c"]])
    bad = feats.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rank_gallery(feats, bad, ["a", "b", "c"], k=2)
    with pytest.raises(ValueError, match="both"):
        rank_gallery(feats, feats, ["a", "b", "c"], k=2, query_groups=["", "", ""])
