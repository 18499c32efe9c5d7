"""The data order that makes a resumed run exact: each process's share of an epoch's order.

`EpochSampler` shuffles all samples per epoch; `dataloaders.shards.ShardSampler`
changes only the order (shards, then samples within windows of shards). Both
deal global batches to processes the same way and start at any sample, so a
run resumed mid-epoch sees exactly the samples the uninterrupted run would
have seen (with the same batch size, the same batches).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """This process's share of an epoch's shuffled order, from any sample position.

    The global order of epoch e is a permutation of all samples
    (`torch.randperm` seeded with seed + e). Global batch k is positions
    [k·B, (k+1)·B) of it, B = world_size · local_batch, and process r takes
    the slice [r·L, (r+1)·L) of each. The tail that does not fill a global
    batch is left out, so every process runs the same number of steps.

    The place in an epoch is a number of samples, not of batches: a run
    resumed with another batch size or process count goes on with exactly the
    samples the interrupted run had not seen yet.

    With `keyed=True` it yields (epoch, index) pairs, so the epoch reaches
    DataLoader workers that outlive an epoch (`--persistent_workers`) with
    every index (`PairDataset` takes such keys).
    """

    def __init__(self, dataset_size: int, world_size: int, rank: int, local_batch: int, seed: int,
                 keyed: bool = False):
        self.size, self.rank, self.local_batch, self.seed = dataset_size, rank, local_batch, seed
        self.keyed = keyed
        self.global_batch = world_size * local_batch
        self.batches_per_epoch = dataset_size // self.global_batch  # of a whole epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_sample: int = 0) -> None:
        """Iterate epoch `epoch` from global position `start_sample` on."""
        self.epoch, self.start = epoch, start_sample

    def batches_left(self) -> int:
        return (self.size - self.start) // self.global_batch

    def _order(self) -> np.ndarray:
        """The global order of epoch `self.epoch`: every sample index once."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator).numpy()

    def __iter__(self):
        order = self._order()
        batches = self.batches_left()
        mine = order[self.start:self.start + batches * self.global_batch].reshape(batches, self.global_batch)
        mine = mine[:, self.rank * self.local_batch:(self.rank + 1) * self.local_batch].reshape(-1)
        if self.keyed:
            epoch = self.epoch
            return ((epoch, int(i)) for i in mine)
        return (int(i) for i in mine)

    def __len__(self) -> int:
        return self.batches_left() * self.local_batch
