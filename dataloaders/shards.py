"""Training on shards: the torch dataset and the shard-level shuffled sampler (docs/data.md, "Shards").

`ShardPairDataset` returns exactly PairDataset's items (same frame rule, same transform, same
randomness, uint8) from the members of a `dataloaders.shard_format.ShardSet`; a member that
cannot be read or decoded is skipped and reported like an unreadable file
(`dataloaders.datasets.SkipReport`), a sample without a usable image or frame is replaced
as PairDataset does.

`ShardSampler` gives an epoch's order: shards permuted by (seed, epoch), samples shuffled
within windows of K consecutive shards of that permutation, global batches dealt to ranks as
`dataloaders.samplers.EpochSampler` does; a pure function of (seed, epoch) and the start
position, so a resumed run continues exactly.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .datasets import PairDataset
from .samplers import EpochSampler
from .sampling import pad_frames, train_frame_indices
from .shard_format import SLOT_SHOP, ShardReadError, ShardSet, member_name, read_member
from .transforms import ImageTransform


def decode_member(data: bytes, where: str, transform: ImageTransform, rng, skipped: list[str]):
    """Decode and transform member bytes as `datasets._read` does a file; None (recorded) on failure."""
    try:
        return transform.read(data, rng)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        skipped.append(f"{where} (cannot decode)")
        return None


class ShardPairDataset(PairDataset):
    """PairDataset over shards: the same items, from the same bytes, with the same randomness.

    A sample's randomness is seeded with (seed, epoch, TSV row), as PairDataset seeds pair
    `row` of the TSV, so a clip gets the same frames and augmentation from shards as from
    files even when packing dropped other samples. `index` in an item is the shard sample.
    """

    def __init__(self, shards: ShardSet, image_transform: ImageTransform, frame_transform: ImageTransform,
                 max_frames: int = 10, seed: int = 42, max_replacements: int = 10, tail_cut: str = "v1"):
        super().__init__(shards, image_transform, frame_transform, max_frames, seed, max_replacements, tail_cut)

    def _member(self, path, fd, members, row, slot, transform, rng, skipped):
        data = read_member(path, fd, members, row, slot, skipped)
        if data is None:
            return None
        return decode_member(data, f"{path}:{member_name(row, slot)}", transform, rng, skipped)

    def _load(self, index: int, epoch: int, skipped: list[str]):
        try:
            path, fd, members, n, row = self.pairs.sample(index)
        except ShardReadError as err:
            skipped.append(str(err))
            return None
        rng = np.random.default_rng((self.seed, epoch, row))
        chosen = train_frame_indices(n, self.max_frames, rng, self.tail_cut_full_only)
        image = self._member(path, fd, members, row, SLOT_SHOP, self.image_transform, rng, skipped)
        if image is None:
            return None
        frames = [f for i in chosen
                  if (f := self._member(path, fd, members, row, i, self.frame_transform, rng, skipped)) is not None]
        if not frames:
            return None
        frames, mask = pad_frames(frames, self.max_frames, (3, self.frame_transform.image_size,
                                                            self.frame_transform.image_size))
        return {"image": image, "frames": frames, "frame_mask": mask, "index": index}


# ------------------------------------------------------------------------------------ order
def shard_epoch_order(sizes: np.ndarray, seed: int, epoch: int, window: int) -> np.ndarray:
    """Sample positions (0..sum(sizes)-1, shard-major) in the order of epoch `epoch`.

    Shards are permuted with a generator seeded by (seed, epoch); the samples of each window
    of `window` consecutive shards of that permutation are shuffled among themselves.
    """
    sizes = np.asarray(sizes, np.int64)
    rng = np.random.default_rng((seed, epoch))
    perm = rng.permutation(len(sizes))
    starts = np.r_[0, np.cumsum(sizes)][:-1]
    lengths = sizes[perm]
    total = int(lengths.sum())
    run_start = np.cumsum(lengths) - lengths
    order = np.arange(total, dtype=np.int64) + np.repeat(starts[perm] - run_start, lengths)
    windows = np.repeat(np.arange(len(sizes)) // max(window, 1), lengths)
    keys = rng.random(total)
    return order[np.lexsort((keys, windows))]


class ShardSampler(EpochSampler):
    """`EpochSampler` with the shard-level shuffled order of `shard_epoch_order`."""

    def __init__(self, sizes, world_size: int, rank: int, local_batch: int, seed: int, window: int,
                 keyed: bool = False):
        self.sizes = np.asarray(sizes, np.int64)
        self.window = window
        super().__init__(int(self.sizes.sum()), world_size, rank, local_batch, seed, keyed=keyed)

    def _order(self) -> np.ndarray:
        return shard_epoch_order(self.sizes, self.seed, self.epoch, self.window)
