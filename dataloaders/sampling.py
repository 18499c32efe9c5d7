"""Which frames of a clip a sample uses (docs/evaluation.md; docs/training.md), and padding to a fixed length.

Two different rules, on purpose:
  train: indices floor(linspace(0, n-1, T)), then with probability 0.5 drop a random
         tail fraction p in {0, 0.1, ..., 0.9} of them (at least one frame is kept);
  eval:  indices floor(linspace(0, n, T, endpoint=False)), as the v1 evaluation tool
         and the MovingFashion preparation did; deterministic.
They differ for n = 11, 12, ... (e.g. n=12: train [0,1,2,3,4,6,7,8,9,11], eval [0,1,2,3,4,6,7,8,9,10]).
A clip with n <= T frames keeps all of them in both rules (before the train tail drop).
"""
import numpy as np
import torch


def eval_frame_indices(n: int, max_frames: int) -> list[int]:
    """Deterministic evaluation rule: floor(linspace(0, n, max_frames, endpoint=False))."""
    if n <= max_frames:
        return list(range(n))
    return np.floor(np.linspace(0, n, max_frames, endpoint=False)).astype(int).tolist()


def train_frame_indices(n: int, max_frames: int, rng: np.random.Generator, full_only: bool = False) -> list[int]:
    """Training rule: uniform floor(linspace(0, n-1, max_frames)) then the random tail drop.

    `full_only` (the v2 release's rule, recipe v2_release): the tail drop is tried
    only when exactly `max_frames` frames were sampled.
    """
    if n <= max_frames:
        indices = list(range(n))
    else:
        indices = np.floor(np.linspace(0, n - 1, max_frames)).astype(int).tolist()
    if full_only and len(indices) != max_frames:
        return indices
    if indices and rng.random() < 0.5:
        tenths = int(rng.integers(0, 10))          # p = tenths / 10, exact integer arithmetic
        keep = max(1, len(indices) - (len(indices) * tenths) // 10)
        indices = indices[:keep]
    return indices


def pad_frames(frames: list[torch.Tensor], max_frames: int, frame_shape: tuple[int, int, int]):
    """Stack up to max_frames tensors [3,H,W] into [T,3,H,W] zero-padded, plus frame_mask [T].

    frame_mask is a bool tensor, True = real frame, False = padding.
    """
    out = torch.zeros((max_frames, *frame_shape), dtype=frames[0].dtype if frames else torch.uint8)
    mask = torch.zeros(max_frames, dtype=torch.bool)
    for t, frame in enumerate(frames[:max_frames]):
        out[t] = frame
        mask[t] = True
    return out, mask
