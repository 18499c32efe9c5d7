"""Torch datasets for training pairs, evaluation clips and gallery images.

Bad files never crash a run and never cause endless retries:
  * an unreadable frame is dropped (the clip keeps its other frames);
  * a training sample whose image or all of whose frames are unreadable is replaced by a
    deterministic other sample (index+1, index+2, ... at most `max_replacements` tries,
    then a RuntimeError that names the paths);
  * an evaluation clip with no readable frame comes back with frame_mask all False, an
    unreadable gallery image with ok=False; the evaluator counts them as misses.

How skips are reported: DataLoader workers are separate processes, so every item carries
the paths it failed to read in item["skipped"] (a list of str) and, for training,
item["replaced"] (0 or 1). The collate functions here concatenate those lists, and the
trainer feeds every batch to a `SkipReport`, which logs counts and a few example paths once
per epoch.

Training randomness (frame tail drop, v2 crop/flip) comes from a numpy Generator seeded by
(seed, epoch, index): batches are identical across runs and across worker counts. The epoch
travels with the key: a sampler that yields (epoch, index) pairs (the trainer's
`EpochSampler(keyed=True)`) reaches workers that live across epochs (`persistent_workers`);
a plain int key uses the epoch of `set_epoch`, which only reaches workers started after it.
"""
import logging
import multiprocessing
import signal
import threading

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .records import GalleryImage, Query, TrainPair
from .sampling import eval_frame_indices, pad_frames, train_frame_indices
from .transforms import ImageTransform

logger = logging.getLogger(__name__)


def _read(path: str, transform: ImageTransform, rng, skipped: list[str]):
    """Decode and transform one file; on failure record the path and return None."""
    try:
        return transform.read(path, rng)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # missing, truncated, not an image, or over PIL's pixel limit (a decompression bomb)
        skipped.append(path)
        return None


def _check_deterministic(transform: ImageTransform) -> None:
    if transform.train and transform.style == "v2":
        raise ValueError("evaluation datasets need a deterministic transform: "
                         "use build_transform(style, train=False, image_size)")


def _frame_shape(transform: ImageTransform) -> tuple[int, int, int]:
    return (3, transform.image_size, transform.image_size)


class PairDataset(Dataset):
    """Training pairs -> {"image": [3,H,W], "frames": [T,3,H,W], "frame_mask": bool [T],
    "index": int (the sample actually used), "skipped": list[str], "replaced": int}."""

    def __init__(self, pairs: list[TrainPair], image_transform: ImageTransform,
                 frame_transform: ImageTransform, max_frames: int = 10, seed: int = 42,
                 max_replacements: int = 10, tail_cut: str = "v1"):
        if not pairs:
            raise ValueError("PairDataset got no training pairs")
        self.pairs, self.image_transform, self.frame_transform = pairs, image_transform, frame_transform
        self.max_frames, self.seed = max_frames, seed
        self.max_replacements = max_replacements
        self.tail_cut_full_only = tail_cut == "v2"  # v2: only clips of exactly max_frames frames lose a tail
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.pairs)

    def _load(self, index: int, epoch: int, skipped: list[str]):
        pair = self.pairs[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        n = len(pair.frame_paths)
        chosen = train_frame_indices(n, self.max_frames, rng, self.tail_cut_full_only)
        image = _read(pair.image_path, self.image_transform, rng, skipped)
        if image is None:
            return None
        frames = [f for i in chosen
                  if (f := _read(pair.frame_paths[i], self.frame_transform, rng, skipped)) is not None]
        if not frames:
            return None
        frames, mask = pad_frames(frames, self.max_frames, _frame_shape(self.frame_transform))
        return {"image": image, "frames": frames, "frame_mask": mask, "index": index}

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """`key`: a sample index (epoch from `set_epoch`) or an (epoch, index) pair."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        skipped: list[str] = []
        for attempt in range(self.max_replacements + 1):
            candidate = (index + attempt) % len(self.pairs)
            item = self._load(candidate, epoch, skipped)
            if item is not None:
                item["skipped"], item["replaced"] = skipped, int(attempt > 0)
                return item
        raise RuntimeError(
            f"sample {index} and the {self.max_replacements} samples after it are all unreadable "
            f"(first failed paths: {skipped[:5]}); check that data_root points at the data")


class ClipDataset(Dataset):
    """Evaluation queries -> {"frames": [T,3,H,W], "frame_mask": bool [T], "index": int,
    "skipped": list[str]}. Deterministic (eval frame rule, eval transform)."""

    def __init__(self, queries: list[Query], transform: ImageTransform, max_frames: int = 10):
        _check_deterministic(transform)
        self.queries, self.transform, self.max_frames = queries, transform, max_frames

    def __len__(self):
        return len(self.queries)

    def __getitem__(self, index: int) -> dict:
        paths = self.queries[index].frame_paths
        skipped: list[str] = []
        frames = [f for i in eval_frame_indices(len(paths), self.max_frames)
                  if (f := _read(paths[i], self.transform, None, skipped)) is not None]
        frames, mask = pad_frames(frames, self.max_frames, _frame_shape(self.transform))
        return {"frames": frames, "frame_mask": mask, "index": index, "skipped": skipped}


class ImageDataset(Dataset):
    """Gallery images -> {"image": [3,H,W], "index": int, "ok": bool, "skipped": list[str]}.
    An unreadable image gives zeros and ok=False."""

    def __init__(self, gallery: list[GalleryImage], transform: ImageTransform):
        _check_deterministic(transform)
        self.gallery, self.transform = gallery, transform

    def __len__(self):
        return len(self.gallery)

    def __getitem__(self, index: int) -> dict:
        skipped: list[str] = []
        image = _read(self.gallery[index].path, self.transform, None, skipped)
        ok = image is not None
        if not ok:
            image = torch.zeros(_frame_shape(self.transform), dtype=torch.uint8)
        return {"image": image, "index": index, "ok": ok, "skipped": skipped}


def settle_before_fork(timeout: float = 2.0) -> None:
    """Wait until the queue-feeder threads of finished DataLoaders have ended; call before a new
    DataLoader forks its workers (`loader_options` does).

    A finished DataLoader closes its index queues without joining their feeder threads, so they
    end a moment later. A fork while a Python thread is ending copies CPython's thread-state lock
    held, and the new worker then blocks forever in `os.fork` (seen as a training run that hangs
    at an epoch start, the other processes waiting in a collective). Closed queues' feeders end
    at once; `timeout` bounds the wait for any other.
    """
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and thread.name == "QueueFeederThread":
            thread.join(timeout)


# Imported once by the fork server, so that every worker it forks starts with them loaded.
FORKSERVER_PRELOAD = ["torch", "dataloaders.datasets", "dataloaders.shards"]


def worker_context():
    """How DataLoader workers start: a fork server in a process group, else PyTorch's default (None).

    A process in a torch.distributed group runs the backend's threads (gloo's, NCCL's), which
    take Python's interpreter lock from C++ when they drop the last reference to a tensor of a
    finished collective, creating a Python thread state for it. A fork at that moment copies the
    runtime's thread-list lock held, and the worker blocks forever in `os.fork` (Python before
    3.13 does not guard against it; two gloo processes starting a worker right after all-reduces
    hung so in 5 of 8 runs of 300 starts): its process then waits for a batch that never comes,
    and the other processes wait for it in a collective. Workers forked from a fork server, a
    process started clean with `FORKSERVER_PRELOAD` imported, are free of that: it has no such
    threads (0 hangs in 8 runs of the same test). Cost: the server starts once per process (one
    import of torch); each worker then starts about as fast as a fork and receives the dataset
    pickled (the datasets here pickle their file paths, not their data). Without a group, or
    where the platform has no fork server, workers start as PyTorch starts them (fork on
    Linux), after `settle_before_fork`.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and "forkserver" in multiprocessing.get_all_start_methods():
        return fork_server_context()
    settle_before_fork()
    return None


def fork_server_context():
    """The fork-server context for DataLoader workers, its server running: started (once per
    process) with `FORKSERVER_PRELOAD` imported and the stop signals blocked (`_start_fork_server`)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)  # no effect once the server runs
    _start_fork_server()
    return context


# What a cluster (SLURM's scancel, time limit, preemption) or Ctrl-C sends to every process of a job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _start_fork_server() -> None:
    """Start the fork server, if not running, with the stop signals blocked: it and the workers it
    forks inherit that mask, so a signal sent to every process of the job leaves them running
    (see `ignore_stop_signals`; Python's resource tracker starts the same way). A worker whose
    fork server has gone ends within 5 s (PyTorch's check of its parent), and its training
    process then fails with "DataLoader worker exited unexpectedly". In this process the
    signals are blocked for the start alone and are delivered when unblocked, not lost."""
    from multiprocessing import forkserver, resource_tracker

    # The fork server's start first starts the resource tracker if it is not running, which
    # unblocks these two signals when done: so start that one before blocking.
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A loading worker's `worker_init_fn`: SIGTERM and SIGINT leave it running.

    A scheduler stopping a job (and Ctrl-C in a terminal) signals every process, the loading
    workers too. A worker killed so makes its training process fail at once with "DataLoader
    worker ... is killed by signal", wherever it is, even halfway through writing the checkpoint
    that the same signal asked for. Ignoring them, the workers go on serving batches while the
    training process finishes its step and saves; they end with it (its loaders shut them down,
    or they notice it is gone), or by SIGKILL.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def loader_options(num_workers: int, prefetch_factor: int | None = None, persistent_workers: bool = False) -> dict:
    """DataLoader keyword arguments for the worker flags (`--num_workers`, `--prefetch_factor`,
    `--persistent_workers`); the last two mean nothing without workers and are dropped then.
    With workers, `worker_init_fn` makes them outlive a job-wide stop signal
    (`ignore_stop_signals`) and `multiprocessing_context` is added where `worker_context`
    chooses one; call this right before the DataLoader is made."""
    options = {"num_workers": num_workers}
    if num_workers > 0:
        options["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            options["prefetch_factor"] = prefetch_factor
        options["worker_init_fn"] = ignore_stop_signals
        context = worker_context()
        if context is not None:
            options["multiprocessing_context"] = context
    return options


def collate_samples(items: list[dict]) -> dict:
    """Stack tensors, turn ints/bools into tensors, concatenate the "skipped" path lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "skipped":
            batch[key] = [path for paths in values for path in paths]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], bool):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        else:
            batch[key] = torch.tensor(values)
    return batch


class SkipReport:
    """Counts unreadable files and replaced samples over an epoch; `log()` reports once.

    Usage in a training loop:
        report = SkipReport("train")
        for batch in loader: report.update(batch); ...
        report.log(epoch)          # one line (or nothing when all files were fine), then resets
    """

    def __init__(self, name: str, max_examples: int = 5):
        self.name, self.max_examples = name, max_examples
        self.reset()

    def reset(self) -> None:
        self.num_skipped, self.num_replaced, self.examples = 0, 0, []

    def update(self, batch: dict) -> None:
        paths = batch.get("skipped", [])
        self.num_skipped += len(paths)
        room = self.max_examples - len(self.examples)
        self.examples.extend(p for p in paths[:room] if p not in self.examples)
        if "replaced" in batch:
            self.num_replaced += int(torch.as_tensor(batch["replaced"]).sum())

    def summary(self) -> str:
        return (f"{self.name}: {self.num_skipped} unreadable files skipped, "
                f"{self.num_replaced} samples replaced; examples: {self.examples}")

    def log(self, epoch: int | None = None, log=logger.warning) -> str | None:
        """Log the summary if anything was skipped, reset, and return the logged line."""
        line = None
        if self.num_skipped or self.num_replaced:
            line = (f"epoch {epoch} " if epoch is not None else "") + self.summary()
            log(line)
        self.reset()
        return line
