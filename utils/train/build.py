"""What a training run is built from: its data root and pairs, the model, and small run helpers."""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import signal
from pathlib import Path

import torch

from dataloaders.registry import DATASETS
from modules.checkpoint import load_checkpoint
from modules.config import VISION_CONFIGS, RICEConfig
from modules.rice import RICEModel
from utils.errors import ConfigError, TrainingError
from utils.options import check_writable
from utils.runtime.distributed import Runtime, any_process, barrier
from utils.train.recipes import init_heads, model_class

log = logging.getLogger("rice.train")


def data_root(args: argparse.Namespace, runtime: Runtime) -> Path:
    """The root to read; for --dataset synthetic, generated once (by the main process) if absent."""
    root = DATASETS[args.dataset].root(args.data_root, args.output_dir, runtime.is_main)
    barrier()
    return root


def build_model(args: argparse.Namespace) -> RICEModel:
    """The model of the requested row, initialised from CLIP, a RICE checkpoint or random.

    The transform style goes into the model's config, so evaluation and
    validation preprocess as the model was trained.
    """
    heads = dict(sim_header=args.sim_header, cross_num_hidden_layers=args.cross_num_hidden_layers,
                 recons_feat=args.recons_feat, transform_style=args.transform_style)
    recipe = getattr(args, "recipe", "modern")
    model_cls, recipe_fields = model_class(recipe)
    heads.update(recipe_fields)
    if args.pretrained_clip:
        ckpt = load_checkpoint(args.pretrained_clip)
        model = model_cls(RICEConfig(vision=ckpt.vision, **heads))
        init_heads(model, recipe)
        model.init_from_clip(ckpt)
        log.info("encoder initialised from %s (%s)", ckpt.path, ckpt.format)
    elif args.init_model:
        ckpt = load_checkpoint(args.init_model)
        pmd_heads = ckpt.heads.pmd_heads if ckpt.heads is not None else 8
        config = RICEConfig(vision=ckpt.vision, video_pooling=ckpt.video_pooling, pmd_heads=pmd_heads, **heads)
        model = RICEModel.from_rice_init(ckpt, config)
    else:
        model = model_cls(RICEConfig(vision=VISION_CONFIGS[args.model_config], **heads))
        init_heads(model, recipe)
        log.warning("no --pretrained_clip: the %s encoder starts from RANDOM weights (fine for tests and the "
                    "demo; for real training pass --pretrained_clip ViT-B-32.pt)", args.model_config)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.set_pmd_chunk_size(args.pmd_chunk_size)
    model.set_pmd_shared_dropout(args.pmd_shared_dropout)
    return model


def memory_window(device: torch.device) -> dict[str, float]:
    """Memory figures (MiB) since the previous call, then the peaks start again for the next window.

    On a GPU: `mem_mb`, the peak of allocated tensor memory; `mem_reserved_mb`,
    the peak the caching allocator held (what the device really lost to this
    process); `rss_mb`, the host process's resident set now. On the CPU:
    `mem_mb`, the peak resident set of the window (Linux resets the
    high-water mark on request; elsewhere the process's peak so far), and
    `rss_mb`, the resident set now.
    """
    record = {}
    if device.type == "cuda":
        record["mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["mem_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    status = _proc_status()
    rss = status.get("VmRSS")
    if device.type != "cuda":
        peak = status.get("VmHWM")
        record["mem_mb"] = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _reset_rss_peak()
    record["rss_mb"] = rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def _proc_status() -> dict[str, float]:
    """The kB fields of /proc/self/status in MiB ({} where there is no /proc)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(rest.split()[0]) / 1024 for key, _, rest in (line.partition(":") for line in lines)
            if rest.strip().endswith("kB")}


def _reset_rss_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM); silently not elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


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
        return any_process(self.requested, device)


RUN_FILES = ("args.yaml", "log.jsonl", "model.pt", "checkpoints", "tensorboard")


def prepare_output_dir(args: argparse.Namespace, runtime: Runtime) -> None:
    """Make sure a run cannot silently overwrite another one, and that its folder is writable.

    A folder that already holds a run is refused unless the run is resumed
    (--resume) or --overwrite deletes that run's files first. Temporary files
    that a kill during a checkpoint write left behind are removed. The decision
    is the main process's and every process learns it, so all stop together.
    """
    out = Path(args.output_dir)
    problem = None
    if runtime.is_main:
        problem = _output_dir_problem(args, out)
    if any_process(problem is not None, runtime.device):
        raise TrainingError(problem or "the main process could not use --output_dir (see its error)")


def _output_dir_problem(args: argparse.Namespace, out: Path) -> str | None:
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not args.resume:
        if not args.overwrite:
            return (f"--output_dir {out} already holds a run ({', '.join(existing)}): continue it with --resume "
                    "latest, start afresh there with --overwrite (its files are deleted first), or choose "
                    "another --output_dir")
        for path in (out / name for name in existing):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        log.info("--overwrite: deleted the previous run's %s in %s", ", ".join(existing), out)
    try:
        check_writable(out)
    except ConfigError as err:
        return str(err)
    for stale in (out / "checkpoints").glob(".*.tmp*"):  # a kill during a checkpoint write
        stale.unlink()
        log.info("removed %s, left by an interrupted checkpoint write", stale)
    return None
