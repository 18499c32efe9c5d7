"""AdamW as the v2 release used it (the `transformers` AdamW; recipe `v2_release`, docs/recipes.md).

Per parameter and step t (1-based), with the state in the parameter's dtype:

    m <- b1·m + (1 − b1)·g ;  v <- b2·v + (1 − b2)·g²
    p <- p − lr·√(1 − b2^t)/(1 − b1^t) · m / (√v + eps)     (eps added before the bias correction)
    p <- p − lr·weight_decay·p                                (decay after the update)

This differs from `torch.optim.AdamW`, which decays first and adds eps to
the bias-corrected √v; both matter little, but the recipe keeps v2's order.
"""

from __future__ import annotations

import math

import torch

from utils.train.adam_base import PerParameterAdam


class AdamWv2(PerParameterAdam):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, betas, eps, weight_decay=weight_decay)

    def _update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        beta1, beta2 = group["betas"]
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])
