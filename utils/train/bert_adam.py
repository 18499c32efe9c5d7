"""BertAdam as the v1 release used it (recipe `v1_release`, docs/recipes.md).

Bug-compatible on purpose: this optimizer exists to reproduce the v1
numbers, not to train well. Per parameter and step, in the parameter's own
dtype (fp16 for the encoder weights the recipe converts, fp32 elsewhere):

    g  <- g clipped to norm `max_grad_norm` (this parameter alone)
    m  <- b1·m + (1 − b1)·g                    (state in the parameter's dtype)
    v  <- b2·v + (1 − b2)·g²
    p  <- p − lr · (m / (√v + eps) + weight_decay · p)

No bias correction of m and v, no fp32 master copy of fp16 weights, no loss
scaling. The rate `lr` of each group is set from outside before every step
(utils/train/scheduler.py, `v1_lr_factor`), so the first step of a run has
rate 0 as in v1. A parameter without a gradient is skipped and keeps its state.
"""

from __future__ import annotations

import torch

from utils.train.adam_base import PerParameterAdam


class BertAdam(PerParameterAdam):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_grad_norm: float = 1.0):
        super().__init__(params, lr, betas, eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)

    def _update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        beta1, beta2 = group["betas"]
        if group["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_([p], group["max_grad_norm"])
        grad, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        update = m / (v.sqrt() + group["eps"])
        if group["weight_decay"] > 0:
            update += group["weight_decay"] * p
        p.add_(-(group["lr"] * update))
        state["step"] += 1
