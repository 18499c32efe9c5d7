"""ICL, PMD and PFR loss functions against direct formulas and hand-made cases."""

import math

import torch
import torch.nn.functional as F

from modules.losses import contrastive_loss, hard_negative_candidates, matching_loss, reconstruction_error


def _icl_by_formula(img: torch.Tensor, vid: torch.Tensor, scale: float) -> float:
    """½ mean_i [ -log softmax_j(s·<img_i, vid_j>)_i - log softmax_j(s·<vid_i, img_j>)_i ], in float64 loops."""
    img, vid = img.double().tolist(), vid.double().tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(len(img)):
        for queries, keys in ((img, vid), (vid, img)):
            logits = [scale * dot(queries[i], k) for k in keys]
            total += math.log(sum(math.exp(z - max(logits)) for z in logits)) + max(logits) - logits[i]
    return total / (2 * len(img))


def test_icl_matches_direct_formula():
    torch.manual_seed(0)
    img, vid = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    loss = contrastive_loss(img, vid, img, vid, offset=0, logit_scale=100.0)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - _icl_by_formula(img, vid, 100.0)) < 1e-4


def test_icl_local_shards_average_to_global_loss():
    torch.manual_seed(1)
    img, vid = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    full = contrastive_loss(img, vid, img, vid, offset=0, logit_scale=100.0)
    shards = [contrastive_loss(img[s:s + 3], vid[s:s + 3], img, vid, offset=s, logit_scale=100.0) for s in (0, 3)]
    torch.testing.assert_close((shards[0] + shards[1]) / 2, full)


def test_icl_is_fp32_under_bf16_autocast():
    img = F.normalize(torch.randn(4, 8), dim=-1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = contrastive_loss(img, img, img, img, offset=0, logit_scale=100.0)
    assert loss.dtype == torch.float32


def test_hard_negatives_on_hand_made_similarity():
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3, 0.7],  # positive 0 (also the most similar): negatives 4, 2, 3
            [0.8, 0.2, 0.6, 0.95, 0.1],  # positive 1 (least similar): negatives 3, 0, 2
            [0.0, 0.4, 0.3, 0.2, 0.1],  # positive 2: negatives 1, 3, 4
        ]
    )
    candidates = hard_negative_candidates(similarity, torch.tensor([0, 1, 2]), num_negatives=3)
    assert candidates.tolist() == [[0, 4, 2, 3], [1, 3, 0, 2], [2, 1, 3, 4]]


def test_hard_negatives_are_capped_by_batch_size():
    candidates = hard_negative_candidates(torch.rand(2, 2), torch.tensor([0, 1]), num_negatives=3)
    assert candidates.tolist() == [[0, 1], [1, 0]]


def test_matching_loss_is_scaled_cross_entropy_with_target_zero():
    scores = torch.tensor([[0.02, 0.01, -0.01, 0.0], [0.0, 0.03, 0.01, 0.0]])
    expected = 0.0
    for row in scores.double().tolist():
        logits = [100 * s for s in row]
        expected += math.log(sum(math.exp(z) for z in logits)) - logits[0]
    assert abs(matching_loss(scores, 100.0).item() - expected / 2) < 1e-5


def test_reconstruction_targets_are_detached():
    torch.manual_seed(0)
    weights = torch.rand(2, 3, 4, requires_grad=True)
    video = torch.randn(2, 4, 5, requires_grad=True)
    image = torch.randn(2, 3, 5, requires_grad=True)
    err = reconstruction_error(weights, video, image)
    torch.testing.assert_close(err, ((weights @ video - image) ** 2).sum())
    err.backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0
    assert video.grad is None and image.grad is None
