"""One optimizer step, and the data order that makes a resumed run exact.

`train_step` runs the forward/backward passes of one batch (with gradient
accumulation the encoder runs over micro-batches, and the gradient still
equals the whole batch's), clips the gradient norm and steps the optimizer.
The data order (`EpochSampler`) lives in `dataloaders/samplers.py`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modules.rice import to_device, valid_frames
from utils.runtime.distributed import average_gradients
from utils.runtime.precision import Precision


def train_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer, precision: Precision,
               accumulation: int, clip_grad_norm: float, device: torch.device,
               grad_bf16: bool = False) -> dict[str, torch.Tensor]:
    """Forward/backward of one batch, clip, step. Returns each loss (detached) and `grad_norm` (before clipping).

    `model` is a RICEModel, possibly wrapped in DistributedDataParallel. With
    `accumulation` > 1 the encoder runs over micro-batches so that only one
    micro-batch's encoder activations are alive at a time, and the gradient is
    still EXACTLY that of the whole batch (see `_accumulated_backward`).
    `grad_bf16`: that path averages over processes in bf16 (DDP's own sync gets
    the same from the trainer's `--ddp_bf16_compress` hook).
    """
    optimizer.zero_grad(set_to_none=True)
    images, frames = (to_device(batch[key], device) for key in ("image", "frames"))
    host_mask = batch["frame_mask"]  # the valid frames are found on the host: no device wait in the step
    if accumulation == 1:
        # Both go to the device here: DistributedDataParallel would move a host mask there itself.
        mask, index = to_device(host_mask, device), to_device(valid_frames(host_mask), device)
        with precision.autocast():
            losses = model(images, frames, mask, index)
        precision.backward(losses["loss"])
    else:
        losses = _accumulated_backward(model, images, frames, host_mask, precision, accumulation, grad_bf16)
    totals = {name: value.detach().float() for name, value in losses.items()}
    precision.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if clip_grad_norm > 0:
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    else:
        totals["grad_norm"] = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    precision.step(optimizer)
    return totals


def _accumulated_backward(model, images, frames, mask, precision: Precision, accumulation: int,
                          grad_bf16: bool = False) -> dict:
    """Whole-batch gradients with the encoder run one micro-batch at a time (a gradient cache).

    1. Encode every micro-batch without gradient and concatenate the features.
    2. Compute the losses on those features, made leaves that require grad, and
       backpropagate: this gives the heads' gradients and dLoss/dfeatures, with
       every negative of the whole batch (and, across processes, of the global
       batch) in place.
    3. Encode each micro-batch again with gradient and backpropagate its slice
       of dLoss/dfeatures into the encoder. The encoder has no dropout, so the
       second pass reproduces the first, and the summed gradient is the
       whole-batch gradient.
    Under DistributedDataParallel the wrapper's own gradient sync is not used
    (its forward is bypassed); the gradients are averaged over processes here.
    """
    core = model.module if isinstance(model, DistributedDataParallel) else model
    chunks = list(zip(images.chunk(accumulation), frames.chunk(accumulation), mask.chunk(accumulation)))
    with torch.no_grad(), precision.autocast():
        parts = [core.encode_pairs(*chunk) for chunk in chunks]
    leaves = {key: _leaf(torch.cat([p[key] for p in parts])) for key in parts[0]}
    with precision.autocast():
        losses = core.pair_losses(leaves)
    precision.backward(losses["loss"])
    start = 0
    for chunk in chunks:
        size = chunk[0].shape[0]
        with precision.autocast():
            features = core.encode_pairs(*chunk)
        pairs = [(features[k], leaves[k].grad[start:start + size]) for k in features if leaves[k].grad is not None]
        torch.autograd.backward([f for f, _ in pairs], [g.to(f.dtype) for f, g in pairs])
        start += size
    average_gradients([p.grad for p in core.parameters() if p.grad is not None], bf16_compress=grad_bf16)
    return losses


def _leaf(features: torch.Tensor) -> torch.Tensor:
    """A detached copy that collects gradient (bool masks stay as they are)."""
    features = features.detach()
    return features.requires_grad_() if features.is_floating_point() else features
