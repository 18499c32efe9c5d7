"""What a training run is built from: its data root and pairs, the model, and small run helpers."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from dataloaders.registry import DATASETS
from modules.checkpoint import load_checkpoint
from modules.config import VISION_CONFIGS, RICEConfig
from modules.rice import RICEModel
from utils.runtime.distributed import Runtime, barrier, is_distributed

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
    if args.pretrained_clip:
        ckpt = load_checkpoint(args.pretrained_clip)
        model = RICEModel(RICEConfig(vision=ckpt.vision, **heads))
        model.init_from_clip(ckpt)
        log.info("encoder initialised from %s (%s)", ckpt.path, ckpt.format)
    elif args.init_model:
        ckpt = load_checkpoint(args.init_model)
        pmd_heads = ckpt.heads.pmd_heads if ckpt.heads is not None else 8
        config = RICEConfig(vision=ckpt.vision, video_pooling=ckpt.video_pooling, pmd_heads=pmd_heads, **heads)
        model = RICEModel.from_rice_init(ckpt, config)
    else:
        model = RICEModel(RICEConfig(vision=VISION_CONFIGS[args.model_config], **heads))
        log.warning("no --pretrained_clip: the %s encoder starts from RANDOM weights (fine for tests and the "
                    "demo; for real training pass --pretrained_clip ViT-B-32.pt)", args.model_config)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
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
