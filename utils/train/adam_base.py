"""The loop the releases' Adam variants share (`bert_adam.BertAdam`, `adamw_v2.AdamWv2`).

Per parameter with a gradient: its state holds `step` and the moments
`exp_avg` / `exp_avg_sq` in the parameter's own dtype (zeros at the first
step); `_update(p, group, state)` applies the variant's rule. A parameter
without a gradient is skipped and keeps its state.
"""

from __future__ import annotations

import torch


class PerParameterAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, **defaults):
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{type(self).__name__}: invalid lr {lr}, betas {betas} or eps {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, **defaults))

    def _update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                self._update(p, group, state)
        return loss
