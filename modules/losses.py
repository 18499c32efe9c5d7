"""RICE training losses: ICL, PMD hard-negative matching, PFR (docs/method.md).

Each process computes its losses for its LOCAL rows against the batch gathered
from all processes (`utils.runtime.distributed.all_gather_with_grad`). With equal shard
sizes and gradients averaged over processes (DDP), this trains exactly the
single-process loss on the whole (global) batch, and the mean over processes
of each returned loss equals that loss. Every function here works in fp32
(fp64 inputs stay fp64) whatever the autocast state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision tensors to fp32; fp32 and fp64 pass through unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def contrastive_loss(
    image_emb: torch.Tensor,
    video_emb: torch.Tensor,
    all_image_emb: torch.Tensor,
    all_video_emb: torch.Tensor,
    offset: int,
    logit_scale: float,
) -> torch.Tensor:
    """Symmetric InfoNCE (ICL) of local rows against the global batch.

    Args:
        image_emb, video_emb: [B, E] L2-normalised local embeddings; row i is a pair.
        all_image_emb, all_video_emb: [G, E] the global batch (local rows included,
            at rows offset .. offset+B-1).
        offset: global index of the first local row.
        logit_scale: multiplies the cosine similarities (v1: 100).

    Returns:
        ½ [CE(image -> videos) + CE(video -> images)], mean over local rows.
    """
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
        logits_i2v = logit_scale * at_least_fp32(image_emb) @ at_least_fp32(all_video_emb).T  # [B, G]
        logits_v2i = logit_scale * at_least_fp32(video_emb) @ at_least_fp32(all_image_emb).T  # [B, G]
        return 0.5 * (F.cross_entropy(logits_i2v, labels) + F.cross_entropy(logits_v2i, labels))


@torch.no_grad()
def hard_negative_candidates(
    similarity: torch.Tensor, positives: torch.Tensor, num_negatives: int
) -> torch.Tensor:
    """For each image: its positive video, then the most similar other videos.

    Args:
        similarity: [B, G] image-to-video similarity (no gradient needed).
        positives: [B] column of each row's positive video.
        num_negatives: wanted negatives per image; capped at G - 1.

    Returns:
        [B, 1 + k] video indices, column 0 the positive, then negatives in
        decreasing similarity (k = min(num_negatives, G - 1)).
    """
    k = min(num_negatives, similarity.shape[1] - 1)
    rows = torch.arange(similarity.shape[0], device=similarity.device)
    masked = at_least_fp32(similarity).clone()
    masked[rows, positives] = float("-inf")
    negatives = masked.topk(k, dim=1).indices  # [B, k]
    return torch.cat([positives[:, None], negatives], dim=1)


def matching_loss(scores: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """PMD loss: softmax cross-entropy over [B, 1 + k] pair scores, target column 0."""
    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = logit_scale * at_least_fp32(scores)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target)


def reconstruction_error(
    weights: torch.Tensor, video_patches: torch.Tensor, image_patches: torch.Tensor
) -> torch.Tensor:
    """PFR squared error, SUMMED over pairs, patches and channels.

    X̂ = W · sg(X_video) is compared with sg(X_image): both feature sets are
    detached here, so gradients reach the model only through `weights`.

    Args:
        weights: [P, N', M'] reconstruction weights (from the attention maps).
        video_patches: [P, M', E] video patch features, padded frames already zero.
        image_patches: [P, N', E] image patch features.

    Returns:
        scalar fp32 sum of squared errors; divide by P·N'·E for the MSE.
    """
    with torch.autocast(device_type=weights.device.type, enabled=False):
        reconstruction = at_least_fp32(weights) @ at_least_fp32(video_patches.detach())  # [P, N', E]
        return (reconstruction - at_least_fp32(image_patches.detach())).pow(2).sum()
