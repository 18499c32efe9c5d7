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


def v1_lr_factor(step: int, total_steps: int, warmup_proportion: float) -> float:
    """The v1 release's `warmup_cosine` multiplier (recipe v1_release, docs/recipes.md).

    On the global progress x = step / total_steps (0-based step): x / warmup
    during the warm-up, then ½·(1 + cos(π·x)) with x NOT rescaled to the part
    after the warm-up. The first step (x = 0) has rate 0; the factor jumps from
    1 to ½·(1 + cos(π·warmup)) where the warm-up ends and is ½ at the last step
    only when the run is twice as long.
    """
    x = step / total_steps
    if x < warmup_proportion:
        return x / warmup_proportion
    return 0.5 * (1.0 + math.cos(math.pi * x))


def v2_lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The v2 release's `warmup_cosine` multiplier (recipe v2_release): `step / warmup` during the
    warm-up (the first step at rate 0, the peak one step later than ours), then the cosine on the
    part after the warm-up, as `lr_factor`."""
    if step < warmup_steps:
        return step / warmup_steps
    return lr_factor(step, total_steps, warmup_steps)


def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, warmup_steps: int,
           v1_warmup_proportion: float | None = None, rule: str = "modern") -> float:
    """Set every group's rate for `step`; returns the factor.

    `rule` "v2_release" uses `v2_lr_factor`; with `v1_warmup_proportion` the v1
    release's schedule (`v1_lr_factor`) is used and `warmup_steps` is not read.
    """
    if v1_warmup_proportion is not None:
        factor = v1_lr_factor(step, total_steps, v1_warmup_proportion)
    elif rule == "v2_release":
        factor = v2_lr_factor(step, total_steps, warmup_steps)
    else:
        factor = lr_factor(step, total_steps, warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor
