"""The learning-rate schedule as a pure function of the optimizer step.

Linear warm-up over the first `warmup_steps`, then cosine decay to 0 at
`total_steps`. Because the rate depends on the step alone, resuming a run
needs nothing but the step count.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base rate for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, warmup_steps: int) -> float:
    """Set every group's rate for `step`; returns the factor."""
    factor = lr_factor(step, total_steps, warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor
