"""The training run: set-up, resume, the epoch loop, checkpoints, validation, the model export.

`train(args, runtime)` is what lpr4m_train.py calls once the process knows its
place in the world (utils.runtime.distributed.init_distributed). Every process
runs the same loop on its share of each global batch; only the main process
writes files. The step itself lives in utils/train/engine.py, the building
blocks (data root, model) in utils/train/build.py.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloaders.datasets import PairDataset, SkipReport, collate_samples, loader_options
from dataloaders.registry import DATASETS
from dataloaders.samplers import EpochSampler
from dataloaders.shard_format import ShardSet
from dataloaders.shards import ShardPairDataset, ShardSampler
from dataloaders.transforms import build_transform
from modules.checkpoint import export_model
from utils.errors import CheckpointError, DataError, TrainingError
from utils.runtime.distributed import Runtime, all_reduce_mean, all_reduce_sum, barrier, is_distributed
from utils.runtime.precision import Precision, check_precision, set_tf32
from utils.train.build import StopRequest, build_model, data_root, memory_window, prepare_output_dir
from utils.train.checkpointing import (
    LAST,
    atomic_save,
    epoch_checkpoints,
    load_training_state,
    prune_epoch_checkpoints,
    rng_state,
    set_rng_state,
    training_state,
)
from utils.train.engine import train_step
from utils.train.logs import TrainLogger
from utils.train.params import save_args
from utils.train.recipes import build_optimizer, prepare_model, v1_warmup_proportion
from utils.train.scheduler import set_lr
from utils.train.validation import validate

log = logging.getLogger("rice.train")
# Steps between the processes' agreement on a stop request (SIGTERM/SIGINT): each check is an
# all-reduce and a wait for the device, so a multi-process run does it every so many steps.
STOP_CHECK_EVERY = 10


def train(args: argparse.Namespace, runtime: Runtime) -> dict:
    """Train as configured.

    Returns {"model_path", "output_dir", "step", "last_checkpoint", "model"}: the
    trained RICEModel itself (on every process) for callers that go on using it.
    """
    return Trainer(args, runtime).run()


class Trainer:
    """One training run's state: model, optimizer, data order and place in it."""

    def __init__(self, args: argparse.Namespace, runtime: Runtime):
        self.args, self.runtime = args, runtime
        self.out = Path(args.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        check_precision(args.precision, runtime.device)
        self.local_batch = _local_batch(args, runtime.world_size)
        prepare_output_dir(args, runtime)
        self._build_data_and_model()
        self.optimizer = build_optimizer(self.model, args)
        self.precision = Precision(args.precision, runtime.device)
        tf32 = set_tf32(args.tf32, runtime.device)
        if runtime.is_main:
            log.info("fp32 matmuls on %s: %s", runtime.device.type, "TF32" if tf32 else "exact fp32")
        self.step, self.epoch, self.sample_in_epoch = 0, 0, 0
        self.validated_at = None  # the step of the last validation
        self.last_losses: dict[str, float] = {}  # the last logged losses, saved with the model
        self.resumed_from = self._resume()
        self._check_same_place()
        if args.compile:  # in place: parameter names (and so checkpoints) stay as they are
            self.model.visual.compile(mode=args.compile_mode or "default")
        self.ddp = self.model
        if runtime.world_size > 1:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            # The gradients are views into DDP's communication buckets: no copy in and out of them.
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids, gradient_as_bucket_view=True)
            if args.ddp_bf16_compress:
                self.ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
        self.config_dict = self.model.config.to_dict()
        self.args_dict = {k: v for k, v in vars(args).items() if k != "config"}

    # ---------------------------------------------------------------- set-up
    def _build_data_and_model(self) -> None:
        args, runtime = self.args, self.runtime
        spec = DATASETS[args.dataset]
        shards = getattr(args, "train_shards", None)
        root = data_root(args, runtime) if not shards or args.validate else None
        pairs = ShardSet(shards) if shards else spec.load_train(root, args)
        torch.manual_seed(args.seed)
        self.model = build_model(args).to(runtime.device)
        prepare_model(self.model, args.recipe, runtime.world_size)
        size = self.model.config.vision.image_size
        transform = build_transform(args.transform_style, True, size, decode=args.decode)
        tail_cut = "v2" if args.recipe == "v2_release" else "v1"
        # Keyed by (epoch, index): the epoch reaches workers that live across epochs (--persistent_workers).
        if shards:  # the same items; the order shuffles shards, then samples within windows of shards
            self.dataset = ShardPairDataset(pairs, transform, transform, max_frames=args.max_frames, seed=args.seed,
                                            tail_cut=tail_cut)
            self.sampler = ShardSampler(pairs.sizes, runtime.world_size, runtime.rank, self.local_batch, args.seed,
                                        args.shard_shuffle_window, keyed=True)
        else:
            self.dataset = PairDataset(pairs, transform, transform, max_frames=args.max_frames, seed=args.seed,
                                       tail_cut=tail_cut)
            self.sampler = EpochSampler(len(self.dataset), runtime.world_size, runtime.rank, self.local_batch,
                                        args.seed, keyed=True)
        self.loader = None  # with --persistent_workers: one DataLoader (and its workers) for every epoch
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(pairs)} training pairs do not fill one global batch of {args.batch_size}; "
                            "lower --batch_size")
        self.total_steps = args.max_steps or args.epochs * self.steps_per_epoch
        self.warmup_steps = int(args.warmup_proportion * self.total_steps)
        self.val_split = spec.load_validation(root, args) if args.validate else None
        if runtime.is_main:
            log.info("%d training pairs, %d processes x %d pairs, %d steps/epoch, %d steps (%d epochs), warm-up %d",
                     len(pairs), runtime.world_size, self.local_batch, self.steps_per_epoch, self.total_steps,
                     math.ceil(self.total_steps / self.steps_per_epoch), self.warmup_steps)

    def _resume(self) -> Path | None:
        """Load the optimisation state to continue from, if any; seed the dropout RNG otherwise."""
        args, runtime = self.args, self.runtime
        found = _resume_state(args, self.ckpt_dir)
        if found is None:
            torch.manual_seed(args.seed + runtime.rank)  # dropout differs between processes
            return None
        path, state = found
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise TrainingError(f"--resume {path} holds another model than these flags build; resume with "
                                f"the run's own flags (its args.yaml works as --config): {str(err)[:300]}") from None
        saved_batch = state.get("args", {}).get("batch_size")
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        # Files written before the place was counted in samples hold batches of the run's own size.
        self.sample_in_epoch = state.get("sample_in_epoch", state.get("batch_in_epoch", 0) * (saved_batch or 0))
        if saved_batch not in (None, args.batch_size) and runtime.is_main:
            log.warning("resuming a run trained with --batch_size %s with %d: epoch %d goes on from its sample %d "
                        "(no sample skipped or repeated); the step count and the schedule follow the new batch "
                        "size", saved_batch, args.batch_size, self.epoch, self.sample_in_epoch)
        rngs = state["rng"]
        if len(rngs) == runtime.world_size:
            set_rng_state(rngs[runtime.rank])
        else:
            log.warning("resuming with %d processes from a run with %d: dropout randomness is reseeded",
                        runtime.world_size, len(rngs))
            torch.manual_seed(args.seed + 1000 * self.step + runtime.rank)
        if runtime.is_main:
            log.info("resumed from %s at step %d (epoch %d, sample %d)", path, self.step, self.epoch,
                     self.sample_in_epoch)
        return path

    def _check_same_place(self) -> None:
        """Every process must continue from the same step; else all stop with one clear error.

        Each process resolves --resume in its own OUTPUT_DIR. With one folder per
        machine, a node without the checkpoint would start again at step 0 while
        the others continue: the copies drift apart and the run hangs when one
        side finishes first. Checked on every process, so all stop together.
        """
        places = _gather_objects((self.step, self.epoch, self.sample_in_epoch, str(self.resumed_from or "")))
        if len({place[:3] for place in places}) > 1:
            where = "; ".join(f"rank {rank}: step {place[0]} ({place[3] or 'no checkpoint, a new run'})"
                              for rank, place in enumerate(places))
            raise TrainingError(f"the processes would continue from different places ({where}). Every process "
                                "must read the same checkpoint: give all machines one shared --output_dir, or "
                                "copy OUTPUT_DIR/checkpoints/last.pt into each machine's --output_dir")

    # ---------------------------------------------------------------- the run
    def run(self) -> dict:
        args, runtime = self.args, self.runtime
        if runtime.is_main:
            save_args(args, self.out / "args.yaml")
        resume_step = self.step if self.resumed_from else None
        self.logger = TrainLogger(self.out, runtime.is_main, not args.no_tensorboard, resume_step=resume_step)
        self.report = SkipReport("train" if runtime.world_size == 1 else "train (all processes)")
        self.skips_synced, self.epoch_skips = [0, 0], [0, 0]  # (files skipped, samples replaced)
        show_bar = runtime.is_main and not args.no_progress and sys.stderr.isatty()
        self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not show_bar, desc="train",
                        dynamic_ncols=True)
        self.model.train()
        self.window_start, self.window_samples = time.perf_counter(), 0  # for samples/s in the log
        with StopRequest() as stop:
            while self.step < self.total_steps:
                finished_epoch = self._train_epoch(stop)
                if not finished_epoch:  # stopped by --max_steps mid-epoch
                    break
                self._end_epoch()
        self.bar.close()
        if self.val_split is not None and self.validated_at != self.step:
            if runtime.is_main:
                log.info("validation at the end of training (step %d)", self.step)
            self._validate()
        return self._finish()

    def _train_epoch(self, stop: StopRequest) -> bool:
        """Train from the current place to the end of the epoch or of the run; True when the epoch ended."""
        args, runtime = self.args, self.runtime
        self.sampler.set_epoch(self.epoch, self.sample_in_epoch)
        loader = self.loader  # the sampler is re-read by every new iteration of it
        if loader is None:
            options = loader_options(args.num_workers, args.prefetch_factor, args.persistent_workers)
            loader = DataLoader(self.dataset, batch_size=self.local_batch, sampler=self.sampler,
                                collate_fn=collate_samples, drop_last=True, pin_memory=runtime.device.type == "cuda",
                                generator=torch.Generator().manual_seed(args.seed + self.epoch), **options)
            if options.get("persistent_workers"):
                self.loader = loader
        for batch in loader:
            set_lr(self.optimizer, self.step, self.total_steps, self.warmup_steps, v1_warmup_proportion(args),
                   args.recipe)
            losses = train_step(self.ddp, batch, self.optimizer, self.precision, args.gradient_accumulation_steps,
                                args.clip_grad_norm, runtime.device, args.ddp_bf16_compress)
            self.step, self.sample_in_epoch = self.step + 1, self.sample_in_epoch + args.batch_size
            self.window_samples += args.batch_size
            self.report.update(batch)
            self.bar.update(1)
            if self.step % args.log_every_steps == 0 or self.step == self.total_steps:
                record = _record(losses, self.optimizer, self.step, self.epoch, self.window_samples,
                                 self.window_start, runtime.device)
                record.update(self._sync_skips())
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                self.last_losses = {name: record[name] for name in losses if name != "grad_norm"}
                self.logger.log(record)
                self.window_start, self.window_samples = time.perf_counter(), 0
            if (runtime.world_size == 1 or self.step % STOP_CHECK_EVERY == 0) and stop.agreed(runtime.device):
                self._save(self.ckpt_dir / LAST)
                self.bar.close()
                raise SystemExit(f"stopped by a signal at step {self.step}; checkpoint {self.ckpt_dir / LAST}; "
                                 "continue with --resume latest")
            mid_epoch = self.step < self.total_steps and not self._epoch_done()
            if args.save_every_steps and self.step % args.save_every_steps == 0 and mid_epoch:
                self._save(self.ckpt_dir / LAST)  # epoch ends save anyway
            if self.step >= self.total_steps:
                break
        return self._epoch_done()

    def _sync_skips(self) -> dict:
        """Files skipped and samples replaced since the previous call, summed over processes.

        One all-reduce, at log windows and epoch ends (never per step); the
        epoch's totals over all processes accumulate in `epoch_skips`.
        """
        local = [self.report.num_skipped, self.report.num_replaced]
        new = all_reduce_sum([now - before for now, before in zip(local, self.skips_synced)], self.runtime.device)
        self.skips_synced = local
        self.epoch_skips = [total + n for total, n in zip(self.epoch_skips, new)]
        return {"skipped_files": new[0], "replaced_samples": new[1]}

    def _log_skips(self) -> None:
        """Log the epoch's skip totals of all processes once (examples: the main process's), and reset."""
        self._sync_skips()
        if self.runtime.is_main:
            self.report.num_skipped, self.report.num_replaced = self.epoch_skips
            self.report.log(self.epoch)
        self.report.reset()
        self.skips_synced, self.epoch_skips = [0, 0], [0, 0]

    def _epoch_done(self) -> bool:
        """No global batch left in this epoch (the tail that would not fill one is left out)."""
        return len(self.dataset) - self.sample_in_epoch < self.args.batch_size

    def _end_epoch(self) -> None:
        runtime = self.runtime
        self._log_skips()
        self.epoch, self.sample_in_epoch = self.epoch + 1, 0
        self._save(self.ckpt_dir / f"epoch_{self.epoch}.pt")
        if runtime.is_main:
            prune_epoch_checkpoints(self.ckpt_dir, self.args.keep_checkpoints)
        if self.val_split is not None:
            self._validate()

    def _validate(self) -> None:
        args = self.args
        metrics = validate(self.model, self.val_split, replace(self.runtime, progress=False),
                           max_frames=args.max_frames, batch_size=max(self.local_batch, 1),
                           num_workers=args.num_workers, rerank=self.model.config.use_pmd and not args.one_stage,
                           decode=args.decode, prefetch_factor=args.prefetch_factor)
        self.logger.log({"step": self.step, "epoch": self.epoch, "val": metrics["embedding"],
                         **({"val_reranked": metrics["reranked"]} if "reranked" in metrics else {})})
        self.validated_at = self.step
        if self.runtime.is_main:
            log.info("validation at step %d (epoch %d): %s", self.step, self.epoch, metrics)

    def _save(self, path: Path) -> None:
        """A training checkpoint with every process's RNG state, so each can continue exactly.

        Only the main process copies the model and optimizer to the host; the
        others contribute their RNG state alone.
        """
        rngs = _gather_objects(rng_state())
        if self.runtime.is_main:
            state = training_state(self.model, self.config_dict, self.args_dict, self.optimizer, self.precision,
                                   self.step, self.epoch, self.sample_in_epoch, rngs)
            atomic_save(state, path)
            if path.name != LAST:
                atomic_save(state, self.ckpt_dir / LAST)

    def _finish(self) -> dict:
        self.loader = None  # persistent workers end here
        if self.sample_in_epoch:  # the last epoch ended early: keep the exact place for a later resume
            self._save(self.ckpt_dir / LAST)
        model_path = self.out / "model.pt"
        self._log_skips()
        if self.runtime.is_main:
            atomic_save(export_model(self.model, self.config_dict, self.args_dict, self.last_losses), model_path)
            log.info("done: %d steps; model %s", self.step, model_path)
        self.logger.close()
        barrier()
        return {"model_path": str(model_path), "output_dir": str(self.out), "step": self.step,
                "last_checkpoint": str(self.ckpt_dir / LAST), "model": self.model}


def _local_batch(args: argparse.Namespace, world_size: int) -> int:
    """Each process's share of the global batch; errors when it does not divide evenly."""
    if args.batch_size % world_size:
        raise TrainingError(f"--batch_size {args.batch_size} is not divisible by {world_size} processes "
                            "(--batch_size is the GLOBAL batch)")
    local_batch = args.batch_size // world_size
    if local_batch % args.gradient_accumulation_steps:
        raise TrainingError(f"each process's {local_batch} pairs cannot be split into "
                            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} equal micro-batches")
    return local_batch


def _resume_state(args: argparse.Namespace, ckpt_dir: Path) -> tuple[Path, dict] | None:
    """(path, state) of the checkpoint to continue from, or None to start afresh.

    `--resume latest` takes checkpoints/last.pt, or, when that cannot be read
    (a damaged disk, a copy cut short), the newest readable per-epoch
    checkpoint, saying so. A file given by path must be readable.
    """
    if not args.resume:
        return None
    if args.resume != "latest":
        path = Path(args.resume)
        if not path.is_file():
            raise TrainingError(f"--resume {args.resume}: no such checkpoint file")
        return path, load_training_state(path)
    candidates = [p for p in [ckpt_dir / LAST, *reversed(epoch_checkpoints(ckpt_dir))] if p.is_file()]
    if not candidates:
        log.info("--resume latest: no checkpoint in %s yet, starting a new run", ckpt_dir)
        return None
    errors = []
    for path in candidates:
        try:
            state = load_training_state(path)
        except CheckpointError as err:
            errors.append(str(err))
            log.warning("--resume latest: %s; trying an older checkpoint", err)
            continue
        if errors:
            log.warning("--resume latest: continuing from %s, the newest readable checkpoint", path)
        return path, state
    raise TrainingError(f"--resume latest: no checkpoint in {ckpt_dir} can be read ({'; '.join(errors)}); "
                        "start afresh with --overwrite instead of --resume, or in another --output_dir")


def _gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _record(losses: dict, optimizer, step: int, epoch: int, samples: int, since: float, device) -> dict:
    record = {"step": step, "epoch": epoch}
    for name, value in losses.items():
        record[name] = float(all_reduce_mean(value)) if name != "grad_norm" else float(value)
    lrs = {group["name"].split("_")[0]: group["lr"] for group in optimizer.param_groups}
    record.update({f"lr_{name}": lr for name, lr in sorted(lrs.items())})
    record["samples_per_s"] = samples / max(time.perf_counter() - since, 1e-9)
    record.update(memory_window(device))  # peaks of this window; they start again for the next
    return record
