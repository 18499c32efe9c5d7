"""Small helpers over `torch.distributed` that also work without a process group.

With no process group (a plain `python` run, a test, a notebook) every helper
behaves as world size 1: rank 0, gathers are the identity. Under `torchrun`
they act across all processes of the default group.

Gradient convention. `all_gather_with_grad` sends, in the backward pass, the
SUM over processes of the gradients that reach each shard back to the process
that owns it. If every process computes a loss `L_p` on its local rows against
the gathered batch and the optimiser step uses gradients averaged over
processes (what DistributedDataParallel does), the update is exactly the
gradient of `mean_p L_p`: the single-process loss on the whole batch when the
shards have equal size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every process's tensor along dim 0, keeping autograd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every process holds a gradient for the whole gathered tensor; sum them
        # and keep the slice of the local shard.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.size
        return grad[start : start + ctx.size]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Gather `x` [B, ...] from all processes into [world_size * B, ...], rank order.

    Gradients flow back to the local shard (see the module docstring). Every
    process must pass the same shape. Identity with no process group.
    """
    if get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Gather `x` [B, ...] from all processes into [world_size * B, ...], no gradient."""
    if get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over processes (a new tensor; for logging losses)."""
    if get_world_size() == 1:
        return x.detach().clone()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()
