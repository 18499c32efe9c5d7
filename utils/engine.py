"""One optimizer step, and the data order that makes a resumed run exact.

`train_step` runs the forward/backward passes of one global batch (split into
micro-batches with gradient accumulation), clips the gradient norm and steps
the optimizer. `EpochSampler` gives this process its share of an epoch's
shuffled order, starting at any batch, so a run resumed mid-epoch sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from utils.precision import Precision


class EpochSampler(Sampler):
    """DistributedSampler's share of the epoch (shuffled with seed + epoch), minus its first batches.

    Every process gets the same number of indices (the tail of the shuffled
    order that would not fill a global batch is dropped), so all processes run
    the same number of steps.
    """

    def __init__(self, dataset_size: int, world_size: int, rank: int, local_batch: int, seed: int):
        self.local_batch = local_batch
        self.inner = DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.batches_per_epoch = len(self.inner) // local_batch
        self.skip = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = start_batch * self.local_batch

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, self.batches_per_epoch * self.local_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.local_batch - self.skip


def micro_batches(batch: dict, accumulation: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Split a collated batch into `accumulation` equal (images, frames, frame_mask) chunks."""
    parts = [batch[key].chunk(accumulation) for key in ("image", "frames", "frame_mask")]
    return list(zip(*parts))


def train_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer, precision: Precision,
               accumulation: int, clip_grad_norm: float, device: torch.device) -> dict[str, torch.Tensor]:
    """Forward/backward over the micro-batches, clip, step. Returns the mean of each loss (detached).

    Each micro-batch's loss is divided by the number of micro-batches, so the
    accumulated gradient is the mean of the micro-batch gradients. With
    DistributedDataParallel the gradient all-reduce runs once, after the last
    micro-batch. `grad_norm` (before clipping) is returned with the losses.
    """
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    chunks = micro_batches(batch, accumulation)
    for i, (images, frames, mask) in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                losses = model(images.to(device, non_blocking=True), frames.to(device, non_blocking=True),
                               mask.to(device, non_blocking=True))
            precision.backward(losses["loss"] / accumulation)
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + value.detach().float() / accumulation
    precision.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if clip_grad_norm > 0:
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    else:
        totals["grad_norm"] = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    precision.step(optimizer)
    return totals
