"""Command-line arguments of lpr4m_train.py, with an optional YAML `--config`.

Precedence, lowest to highest: the defaults below (the modern recipe of docs/training.md),
the presets of `--recipe` (utils/train/recipes.py), the keys of the `--config` YAML file,
`--row`, the flags given on the command line
(utils/options.py). YAML keys are the argparse destination names (`sim_header`, `batch_size`,
...); an unknown key is an error, so a typo cannot be silently ignored. The
resolved arguments are saved as `args.yaml` in the output folder, which is
itself a valid `--config`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dataloaders.registry import DATASETS
from modules.config import STYLES, VISION_CONFIGS
from utils.errors import ConfigError
from utils.options import (
    HelpFormatter,
    add_fast_decode,
    add_loader_args,
    add_model_args,
    add_pmd_chunk_size,
    check_at_least,
    load_config,
    parse,
    resolve_num_workers,
)
from utils.runtime.precision import PRECISIONS
from utils.train.recipes import RECIPE_HELP, RECIPES, check_recipe_args, recipe_presets

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lpr4m_train.py",
        description="Train RICE (ICL, +PMD, +PFR) on LPR4M, MovingFashion or built-in synthetic data. "
        "Runs as one process, or one process per GPU under torchrun (single or multi node).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", help="YAML file whose keys (flag names without --) become the defaults")

    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS), default="lpr4m",
                      help="; ".join(f"{name}: {spec.description}" for name, spec in DATASETS.items())
                      + " (default: lpr4m)")
    data.add_argument("--data_root", help="dataset root (layouts: docs/data.md)")
    data.add_argument("--train_annotation", help="LPR4M: training TSV (default: training_videoinfo_*.txt "
                      "found under DATA_ROOT or DATA_ROOT/annotations)")
    data.add_argument("--index", help="LPR4M downloaded with img2dataset: the index TSV of "
                      "tools/index_img2dataset.py (the annotations then hold ids, not paths)")
    data.add_argument("--max_frames", type=int, default=10, help="frames sampled per training clip")
    data.add_argument("--transform_style", choices=STYLES, default="v1",
                      help="v1: 224 bicubic squash for images and frames; v2: resize 256, random crop, flip. "
                      "Saved with the model: evaluation and validation use the matching eval transform")
    data.add_argument("--train_shards", help="train from WebDataset shards of tools/pack_shards.py instead of the "
                      "training TSV: their folder or a brace pattern (DIR/train-{000000..000123}.tar); same "
                      "samples, frames and pixels as from the files (docs/data.md, Shards)")
    data.add_argument("--shard_shuffle_window", type=int, default=4,
                      help="with --train_shards: each epoch permutes the shards, then shuffles the samples within "
                      "windows of this many consecutive shards (reads stay near-sequential; a window as large "
                      "as the shard count shuffles the whole set)")
    add_fast_decode(data)
    data.add_argument("--num_workers", type=int, default=None,
                      help="data-loading processes per training process (default: the CPUs this process may use, "
                      "shared among the processes of its machine, less one; at most 8)")
    add_loader_args(data, training=True)

    model = add_model_args(p, "model (the README rows: docs/method.md)")
    model.add_argument("--model_config", choices=sorted(VISION_CONFIGS), default="ViT-B/32",
                       help="encoder shape when no checkpoint gives one (tiny/small: tests and the demo)")
    model.add_argument("--pretrained_clip", help="local OpenAI CLIP checkpoint (ViT-B-32.pt) to start from; "
                       "without it (and without --init_model) the encoder starts from random weights")
    model.add_argument("--init_model", help="start from a RICE checkpoint of any supported format "
                       "(v1, v2 or ours); heads it lacks start from their initialisation")
    model.add_argument("--grad_checkpointing", action="store_true",
                       help="recompute encoder blocks and PMD chunks in the backward pass (less memory)")
    add_pmd_chunk_size(model)
    model.add_argument("--pmd_shared_dropout", action="store_true",
                       help="draw the PMD query dropout once per image, shared by its candidate pairs, so the "
                       "decoder's self blocks run once per image instead of once per pair (a faster PMD part; "
                       "changes the training noise: v1 draws it per pair, the default; docs/training.md)")

    optim = p.add_argument_group("optimisation (the modern recipe by default, docs/training.md)")
    optim.add_argument("--recipe", choices=RECIPES, default=None, help=RECIPE_HELP + " (default: modern)")
    optim.add_argument("--batch_size", type=int, default=96,
                       help="GLOBAL batch of (image, clip) pairs per optimizer step, split over all processes")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="run the encoder over this many micro-batches of each process's share (less "
                       "activation memory); the gradient still equals the whole batch's (gradient cache: "
                       "the encoder runs twice)")
    optim.add_argument("--lr", type=float, default=3e-4, help="learning rate of the new modules (PMD, PFR)")
    optim.add_argument("--coef_lr", type=float, default=1e-3, help="the CLIP encoder learns at lr * coef_lr")
    optim.add_argument("--weight_decay", type=float, default=0.2,
                       help="AdamW decoupled weight decay (never on biases, norms, embeddings)")
    optim.add_argument("--clip_grad_norm", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    optim.add_argument("--epochs", type=int, default=5, help="passes over the training pairs")
    optim.add_argument("--max_steps", type=int, default=None,
                       help="stop after this many optimizer steps (overrides --epochs; the schedule spans them)")
    optim.add_argument("--warmup_proportion", type=float, default=0.1,
                       help="fraction of the steps with linear warm-up (then cosine decay to 0)")
    optim.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32; bf16 autocast (GPUs and CPUs with native bf16); fp16 autocast with a "
                       "gradient scaler (GPU only). Logits, softmaxes and losses are always fp32")
    optim.add_argument("--seed", type=int, default=42, help="seeds the initialisation, data order and dropout")

    run = p.add_argument_group("run, checkpoints and logs")
    run.add_argument("--output_dir", default="outputs/train",
                     help="where args.yaml, log.jsonl, tensorboard/, checkpoints/ and model.pt go")
    run.add_argument("--overwrite", action="store_true",
                     help="OUTPUT_DIR already holds a run and --resume is not given: delete that run's files and "
                     "start afresh (without it such a folder is refused)")
    run.add_argument("--resume", help="a checkpoint to continue from, or 'latest': OUTPUT_DIR/checkpoints/last.pt "
                     "if it exists (otherwise start afresh)")
    run.add_argument("--save_every_steps", type=int, default=500,
                     help="also write checkpoints/last.pt every N optimizer steps (0: only at epoch ends)")
    run.add_argument("--keep_checkpoints", type=int, default=2,
                     help="how many per-epoch checkpoints (epoch_E.pt) to keep, newest first (0: keep all)")
    run.add_argument("--log_every_steps", type=int, default=10, help="write a log.jsonl record every N steps")
    run.add_argument("--no_progress", action="store_true", help="no progress bar (also off when not a TTY)")
    run.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard event files")
    run.add_argument("--validate", action="store_true",
                     help="after each epoch, retrieval R1/R5/R10 on the VALIDATION split (LPR4M layouts)")
    run.add_argument("--val_max_queries", type=int, default=None,
                     help="validate on the first N validation clips only (their galleries stay whole)")
    run.add_argument("--n_gpu", type=int, default=None,
                     help="accepted as in the evaluation scripts, but training runs one process per GPU under "
                     "torchrun: with N > 1 use `torchrun --nproc_per_node N lpr4m_train.py ...` (or "
                     "NPROC_PER_NODE=N bash scripts/train.sh ...); checked against the processes started")
    run.add_argument("--device", choices=("cpu", "cuda"), default=None,
                     help="default: cuda when a GPU is visible, else cpu")

    gpu = p.add_argument_group("GPU and cluster (docs/training.md#gpus-and-clusters)")
    gpu.add_argument("--tf32", dest="tf32", action="store_true", default=True,
                     help="fp32 matmuls and convolutions on the GPU use TF32 tensor cores (Ampere and newer; "
                     "the default; no effect on the CPU)")
    gpu.add_argument("--no_tf32", dest="tf32", action="store_false",
                     help="exact fp32 matmuls on the GPU (slower; for comparing numbers with a CPU run)")
    gpu.add_argument("--compile", action="store_true",
                     help="torch.compile the image encoder (the first steps are slow while it compiles; "
                     "numbers change by rounding only)")
    gpu.add_argument("--compile_mode", choices=COMPILE_MODES, default=None,
                     help="torch.compile mode with --compile (default: default; reduce-overhead: CUDA graphs; "
                     "max-autotune: also tries more kernels, compiles much longer)")
    gpu.add_argument("--ddp_bf16_compress", action="store_true",
                     help="average gradients across processes in bf16 (half the traffic; the averages are "
                     "rounded to bf16, about 3 significant digits)")
    gpu.add_argument("--dist_timeout_min", type=float, default=30.0,
                     help="minutes a process waits in a collective (a peer died or hangs) before the run "
                     "fails instead of hanging")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults < YAML --config < --row < command line; then check the combination."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    try:
        config_values = load_config(parser, pre.config) if pre.config else {}
    except ConfigError as err:
        parser.error(str(err))
    recipe_presets(parser, argv, config_values)
    args = parse(parser, argv)
    check_recipe_args(parser, args)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations that can never work, reported as a usage error."""
    check_at_least(parser, args, 1, ("prefetch_factor",))
    check_at_least(parser, args, 1, ("max_frames", "batch_size", "gradient_accumulation_steps", "epochs",
                                     "log_every_steps", "max_steps", "val_max_queries", "n_gpu"))
    check_at_least(parser, args, 0, ("num_workers", "save_every_steps", "keep_checkpoints", "lr", "coef_lr",
                                     "weight_decay", "clip_grad_norm"))
    if args.compile_mode is not None and not args.compile:
        parser.error(f"--compile_mode {args.compile_mode} has no effect without --compile; add --compile")
    if not args.dist_timeout_min > 0:
        parser.error(f"--dist_timeout_min must be > 0 minutes, got {args.dist_timeout_min}")
    check_at_least(parser, args, 1, ("pmd_chunk_size",))
    if not 0.0 <= args.warmup_proportion < 1.0:
        parser.error(f"--warmup_proportion must be in [0, 1), got {args.warmup_proportion}")
    spec = DATASETS[args.dataset]
    check_at_least(parser, args, 1, ("shard_shuffle_window",))
    if spec.needs_data_root and not args.data_root and not (args.train_shards and not args.validate):
        parser.error(f"--data_root is required for --dataset {args.dataset}"
                     + (" (with --train_shards, for --validate)" if args.train_shards else ""))
    if args.pretrained_clip and args.init_model:
        parser.error("give either --pretrained_clip (start from CLIP) or --init_model (start from a RICE "
                     "checkpoint), not both")
    if args.resume and args.overwrite:
        parser.error("give either --resume (continue the run in OUTPUT_DIR) or --overwrite (replace it), not both")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.n_gpu is not None and args.n_gpu != world:
        parser.error(f"--n_gpu {args.n_gpu}, but {world} training process(es) were started: training runs one "
                     f"process per GPU, started by torchrun: torchrun --nproc_per_node {args.n_gpu} lpr4m_train.py "
                     f"... (or NPROC_PER_NODE={args.n_gpu} bash scripts/train.sh DATASET ROW)")
    resolve_num_workers(args)
    if args.validate and spec.load_validation is None:
        parser.error(f"--validate needs a validation split; the {args.dataset} release has none "
                     "(validate on --dataset lpr4m or synthetic, or drop --validate)")


def save_args(args: argparse.Namespace, path: Path) -> None:
    """Write the resolved arguments as YAML (loadable again with --config).

    `row` is written as null: the row's flags are already in the file, and a
    row read back would override flags the run changed on its command line.
    """
    import yaml

    values = {k: (None if k == "row" else v) for k, v in sorted(vars(args).items()) if k != "config"}
    path.write_text(yaml.safe_dump(values, sort_keys=True))
