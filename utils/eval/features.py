"""Feature extraction for evaluation, split over processes without duplicates.

Every process encodes a strided share of the dataset (items rank, rank+W,
rank+2W, ...), so each gallery image and each query clip is encoded exactly
once; no sampler pads the last batch with repeats. The shares are then
gathered as (index, feature) pairs and put back in dataset order, so the
result does not depend on the number of processes.

Without a process group (one process) the same code runs with W = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from dataloaders.datasets import collate_samples, loader_options
from utils.runtime.distributed import Runtime


def gather_by_index(indices: torch.Tensor, values: torch.Tensor, total: int, runtime: Runtime) -> torch.Tensor:
    """Assemble the per-process rows into one [total, ...] tensor in dataset order.

    Args:
        indices: [n] dataset positions of this process's rows.
        values: [n, ...] this process's rows.
        total: dataset size; every position must be covered exactly once.
    Returns:
        [total, ...] on the CPU, identical on every process.
    """
    if runtime.world_size > 1:
        # all_gather needs equal shapes: pad every share to the longest, index -1.
        comm_device = runtime.device if dist.get_backend() == "nccl" else torch.device("cpu")
        longest = torch.tensor([len(indices)], device=comm_device)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
        longest = int(longest)
        padded_index = torch.full((longest,), -1, dtype=torch.int64, device=comm_device)
        padded_index[: len(indices)] = indices.to(comm_device)
        padded = values.new_zeros((longest, *values.shape[1:]), device=comm_device)
        padded[: len(values)] = values.to(comm_device)
        all_index = [torch.empty_like(padded_index) for _ in range(runtime.world_size)]
        all_values = [torch.empty_like(padded) for _ in range(runtime.world_size)]
        dist.all_gather(all_index, padded_index)
        dist.all_gather(all_values, padded)
        keep = torch.cat(all_index) >= 0
        indices, values = torch.cat(all_index)[keep].cpu(), torch.cat(all_values)[keep].cpu()
    out = values.new_zeros((total, *values.shape[1:]), device="cpu")
    seen = torch.zeros(total, dtype=torch.int64)
    seen.index_add_(0, indices.cpu(), torch.ones_like(indices.cpu()))
    if not bool((seen == 1).all()):
        raise RuntimeError("feature gathering lost or duplicated items; this is a bug, please report it")
    out[indices.cpu()] = values.cpu()
    return out


@torch.no_grad()
def extract_features(
    dataset: Dataset,
    encode: Callable[[dict], tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    batch_size: int,
    num_workers: int,
    desc: str,
    prefetch_factor: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Encode a dataset once across all processes.

    Args:
        dataset: items are dicts with an "index" (position in the dataset).
        encode: batch dict -> (features [b, D] float, valid [b] bool); runs
            under the runtime's autocast and no_grad.
        desc: label of the progress bar (shown on the main process).
        prefetch_factor: batches each loading worker prepares ahead (None: PyTorch's default).
            Each loader here runs once, so persistent workers would change nothing.
    Returns:
        features [N, D] float32 and valid [N] bool, in dataset order, on the
        CPU, identical on every process; and the files the items could not
        read (their "skipped" lists), from every process, sorted.
    """
    share = list(range(runtime.rank, len(dataset), runtime.world_size))
    loader = DataLoader(
        Subset(dataset, share), batch_size=batch_size, shuffle=False, collate_fn=collate_samples,
        **loader_options(num_workers, prefetch_factor),
    )
    indices, features, valid, skipped = [], [], [], []
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (runtime.progress and runtime.is_main))
    for batch in bar:
        with runtime.autocast():
            feats, ok = encode(batch)
        indices.append(batch["index"])
        features.append(feats.float().cpu())
        valid.append(ok.cpu())
        skipped.extend(batch["skipped"])
    if not indices:  # more processes than items: this one has nothing to do
        dim = _feature_dim(dataset, encode, runtime)
        indices, features = [torch.empty(0, dtype=torch.int64)], [torch.empty(0, dim)]
        valid = [torch.empty(0, dtype=torch.bool)]
    index = torch.cat(indices)
    feats = gather_by_index(index, torch.cat(features), len(dataset), runtime)
    ok = gather_by_index(index, torch.cat(valid).to(torch.uint8), len(dataset), runtime).bool()
    if runtime.world_size > 1:
        shares = [None] * runtime.world_size
        dist.all_gather_object(shares, skipped)
        skipped = [path for share in shares for path in share]
    return feats, ok, sorted(skipped)


def _feature_dim(dataset: Dataset, encode: Callable, runtime: Runtime) -> int:
    """Feature width, from encoding the first item (for a process with an empty share)."""
    with runtime.autocast():
        feats, _ = encode(collate_samples([dataset[0]]))
    return feats.shape[1]
