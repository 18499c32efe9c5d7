"""The training run: data, model, optimizer, resume, the epoch loop, checkpoints, logs.

`train(args, env)` is what lpr4m_train.py calls once the process knows its
place in the world (utils.distributed.init_distributed). Every process runs
the same loop on its share of each global batch; only the main process
writes files. The step loop itself lives in utils/engine.py.
"""

from __future__ import annotations

import argparse
import logging
import math
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloaders import (DataError, PairDataset, SkipReport, build_transform, collate_pairs, load_lpr4m_train,
                         load_movingfashion_train)
from dataloaders.synthetic import make_synthetic_dataset
from modules.checkpoint import load_checkpoint
from modules.clip_vit import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from utils.checkpointing import (LAST, atomic_save, load_training_state, model_export, prune_epoch_checkpoints,
                                 set_rng_state, training_state)
from utils.distributed import DistEnv, all_reduce_mean, barrier, is_distributed
from utils.engine import EpochSampler, train_step
from utils.features import Runtime
from utils.logging import TrainLogger
from utils.optim import build_optimizer
from utils.params import save_args
from utils.precision import Precision
from utils.scheduler import set_lr
from utils.validation import load_validation_split, validate

log = logging.getLogger("rice.train")


class TrainingError(RuntimeError):
    """A run that cannot start as configured; the message says what to change."""


# --------------------------------------------------------------------------- building blocks


def data_root_for(args: argparse.Namespace, env: DistEnv) -> Path:
    """The dataset root; for --dataset synthetic, generated once (by the main process) if absent."""
    if args.dataset != "synthetic":
        return Path(args.data_root)
    base = Path(args.data_root) if args.data_root else Path(args.output_dir) / "synthetic_data"
    root = base / "lpr4m"
    if env.is_main and not (root / "annotations").is_dir():
        log.info("generating the synthetic dataset in %s", base)
        make_synthetic_dataset(base, seed=0)
    barrier()
    return root


def load_pairs(args: argparse.Namespace, root: Path):
    if args.dataset == "movingfashion":
        return load_movingfashion_train(root)
    return load_lpr4m_train(root, "train", annotation=args.train_annotation, index=args.index)


def build_model(args: argparse.Namespace) -> RICEModel:
    """The model of the requested ablation row, initialised from CLIP, a RICE checkpoint or random."""
    heads = dict(sim_header=args.sim_header, cross_num_hidden_layers=args.cross_num_hidden_layers,
                 recons_feat=args.recons_feat)
    if args.pretrained_clip:
        ckpt = load_checkpoint(args.pretrained_clip)
        model = RICEModel(RICEConfig(vision=ckpt.vision, **heads))
        model.init_from_clip(ckpt)
        log.info("encoder initialised from %s (%s)", ckpt.path, ckpt.format)
    elif args.init_model:
        model = _from_rice_checkpoint(args.init_model, heads)
    else:
        model = RICEModel(RICEConfig(vision=VISION_CONFIGS[args.model_config], **heads))
        log.warning("no --pretrained_clip: the %s encoder starts from RANDOM weights (fine for tests and the "
                    "demo; for real training pass --pretrained_clip ViT-B-32.pt)", args.model_config)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def _from_rice_checkpoint(path: str, heads: dict) -> RICEModel:
    """Encoder (strict) and whichever heads the checkpoint holds; other heads keep their initialisation."""
    ckpt = load_checkpoint(path)
    stored = ckpt.heads
    if stored is not None and heads["sim_header"] == "cross_attention" and \
            stored.cross_num_hidden_layers != heads["cross_num_hidden_layers"]:
        raise TrainingError(f"--init_model {path} has a PMD of depth {stored.cross_num_hidden_layers}; pass "
                            f"--cross_num_hidden_layers {stored.cross_num_hidden_layers}")
    pmd_heads = stored.pmd_heads if stored is not None else 8
    model = RICEModel(RICEConfig(vision=ckpt.vision, video_pooling=ckpt.video_pooling, pmd_heads=pmd_heads,
                                 **heads))
    model.visual.load_state_dict(ckpt.visual_state, strict=True)
    built = {name for name, module in model.named_children() if module is not None and name != "visual"}
    state = {k: v for k, v in ckpt.heads_state.items() if k.split(".")[0] in built}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing_heads = sorted({k.split(".")[0] for k in missing if not k.startswith("visual.")})
    if unexpected:
        raise TrainingError(f"--init_model {path}: tensors that do not fit the model: {unexpected[:8]}")
    log.info("initialised from %s (%s)%s", path, ckpt.format,
             f"; heads not in the checkpoint start fresh: {missing_heads}" if missing_heads else "")
    return model


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated GPU memory, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag checked between steps (all processes agree before stopping)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> bool:
        if not is_distributed():
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


# --------------------------------------------------------------------------- the run


def train(args: argparse.Namespace, env: DistEnv) -> dict:
    """Train as configured.

    Returns {"model_path", "output_dir", "step", "last_checkpoint", "model"}: the
    trained RICEModel itself (on every process) for callers that go on using it.
    """
    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"
    if env.device.type == "cpu" and args.precision == "fp16":
        raise TrainingError("--precision fp16 needs a GPU (CPU fp16 autocast is slow and overflows); "
                            "use bf16 or fp32 on the CPU")
    if args.batch_size % env.world_size:
        raise TrainingError(f"--batch_size {args.batch_size} is not divisible by {env.world_size} processes "
                            "(--batch_size is the GLOBAL batch)")
    local_batch = args.batch_size // env.world_size
    if local_batch % args.gradient_accumulation_steps:
        raise TrainingError(f"each process's {local_batch} pairs cannot be split into "
                            f"--gradient_accumulation_steps {args.gradient_accumulation_steps} equal micro-batches")

    # Data.
    root = data_root_for(args, env)
    pairs = load_pairs(args, root)
    torch.manual_seed(args.seed)
    model = build_model(args).to(env.device)
    config = model.config
    size = config.vision.image_size
    dataset = PairDataset(pairs, build_transform(args.transform_style, True, size),
                          build_transform(args.transform_style, True, size), max_frames=args.max_frames,
                          train=True, seed=args.seed)
    sampler = EpochSampler(len(dataset), env.world_size, env.rank, local_batch, args.seed)
    steps_per_epoch = sampler.batches_per_epoch
    if steps_per_epoch == 0:
        raise DataError(f"{len(pairs)} training pairs do not fill one global batch of {args.batch_size}; "
                        "lower --batch_size")
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = int(args.warmup_proportion * total_steps)
    val_split = None
    if args.validate:
        val_split = load_validation_split(args.dataset, root, index=args.index, max_queries=args.val_max_queries)

    # Optimisation state, possibly resumed.
    optimizer = build_optimizer(model, args.lr, args.coef_lr, args.weight_decay)
    precision = Precision(args.precision, env.device)
    step, epoch, batch_in_epoch = 0, 0, 0
    resume_path = _resume_path(args, ckpt_dir)
    if resume_path is not None:
        state = load_training_state(resume_path)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise TrainingError(f"--resume {resume_path} holds another model than these flags build; resume with "
                                f"the run's own flags (its args.yaml works as --config): {str(err)[:300]}") from None
        saved_batch = state.get("args", {}).get("batch_size")
        if saved_batch not in (None, args.batch_size):
            log.warning("resuming a run trained with --batch_size %s with %d: the rest of this epoch's data "
                        "order is not the one the original run would have used", saved_batch, args.batch_size)
        optimizer.load_state_dict(state["optimizer"])
        precision.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        rngs = state["rng"]
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
        else:
            log.warning("resuming with %d processes from a run with %d: dropout randomness is reseeded",
                        env.world_size, len(rngs))
            torch.manual_seed(args.seed + 1000 * step + env.rank)
        if env.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_path, step, epoch, batch_in_epoch)
    else:
        torch.manual_seed(args.seed + env.rank)  # dropout differs between processes

    ddp = model
    if env.world_size > 1:
        ddp = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_args(args, out / "args.yaml")
        log.info("%d training pairs, %d processes x %d pairs, %d steps/epoch, %d steps (%d epochs), warm-up %d",
                 len(pairs), env.world_size, local_batch, steps_per_epoch, total_steps, num_epochs, warmup_steps)
    logger = TrainLogger(out, env.is_main, not args.no_tensorboard, resume_step=step if resume_path else None)
    config_dict, args_dict = config.to_dict(), {k: v for k, v in vars(args).items() if k != "config"}

    def save(path: Path, epoch_now: int, batch_now: int) -> None:
        # Every process's RNG state goes into the file, so each can continue exactly.
        state = training_state(model, config_dict, args_dict, optimizer, precision, step, epoch_now, batch_now)
        state["rng"] = _gather_objects(state["rng"])
        if env.is_main:
            atomic_save(state, path)
            if path.name != LAST:
                atomic_save(state, ckpt_dir / LAST)

    report = SkipReport("train")
    runtime = Runtime(env.rank, env.world_size, env.device, args.precision, False)
    show_bar = env.is_main and not args.no_progress and sys.stderr.isatty()
    bar = tqdm(total=total_steps, initial=step, disable=not show_bar, desc="train", dynamic_ncols=True)
    model.train()
    window_start, window_samples = time.perf_counter(), 0
    with StopRequest() as stop:
        while step < total_steps:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, batch_in_epoch)
            loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=args.num_workers,
                                collate_fn=collate_pairs, drop_last=True, pin_memory=env.device.type == "cuda",
                                generator=torch.Generator().manual_seed(args.seed + epoch))
            for batch in loader:
                set_lr(optimizer, step, total_steps, warmup_steps)
                losses = train_step(ddp, batch, optimizer, precision, args.gradient_accumulation_steps,
                                    args.clip_grad_norm, env.device)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                window_samples += args.batch_size
                report.update(batch)
                bar.update(1)
                if step % args.log_every_steps == 0 or step == total_steps:
                    record = _record(losses, optimizer, step, epoch, window_samples, window_start, env.device)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                    logger.log(record)
                    window_start, window_samples = time.perf_counter(), 0
                if stop.agreed(env.device):
                    save(ckpt_dir / LAST, epoch, batch_in_epoch)
                    bar.close()
                    raise SystemExit(f"stopped by a signal at step {step}; checkpoint {ckpt_dir / LAST}; "
                                     "continue with --resume latest")
                if (args.save_every_steps and step % args.save_every_steps == 0 and step < total_steps
                        and batch_in_epoch < steps_per_epoch):  # epoch ends save anyway
                    save(ckpt_dir / LAST, epoch, batch_in_epoch)
                if step >= total_steps:
                    break
            if batch_in_epoch < steps_per_epoch:  # stopped by --max_steps mid-epoch
                break
            if env.is_main:
                report.log(epoch)
            epoch, batch_in_epoch = epoch + 1, 0
            save(ckpt_dir / f"epoch_{epoch}.pt", epoch, 0)
            if env.is_main:
                prune_epoch_checkpoints(ckpt_dir, args.keep_checkpoints)
            if val_split is not None:
                metrics = validate(model, val_split, runtime, max_frames=args.max_frames,
                                   batch_size=max(local_batch, 1), num_workers=args.num_workers,
                                   rerank=config.use_pmd and not args.one_stage)
                logger.log({"step": step, "epoch": epoch, "val": metrics["embedding"],
                            **({"val_reranked": metrics["reranked"]} if "reranked" in metrics else {})})
                if env.is_main:
                    log.info("validation after epoch %d: %s", epoch, metrics)
    bar.close()
    if batch_in_epoch:  # the last epoch ended early: keep the exact place for a later resume
        save(ckpt_dir / LAST, epoch, batch_in_epoch)
    model_path = out / "model.pt"
    if env.is_main:
        report.log(epoch)
        atomic_save(model_export(model, config_dict, args_dict), model_path)
        log.info("done: %d steps; model %s", step, model_path)
    logger.close()
    barrier()
    return {"model_path": str(model_path), "output_dir": str(out), "step": step,
            "last_checkpoint": str(ckpt_dir / LAST), "model": model}


def _resume_path(args: argparse.Namespace, ckpt_dir: Path) -> Path | None:
    if not args.resume:
        return None
    if args.resume == "latest":
        path = ckpt_dir / LAST
        if not path.is_file():
            log.info("--resume latest: no %s yet, starting a new run", path)
            return None
        return path
    path = Path(args.resume)
    if not path.is_file():
        raise TrainingError(f"--resume {args.resume}: no such checkpoint file")
    return path


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
    record["mem_mb"] = memory_mb(device)
    return record
