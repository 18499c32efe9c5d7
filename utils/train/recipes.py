"""Training recipes: this project's modern default beside the two releases' recipes (docs/recipes.md).

`--recipe` chooses one:

- `modern` (default): fp32 master weights, AdamW without decay on biases,
  norms and embeddings, warm-up then a cosine restarted after it, the exact
  global-batch gradient (utils/train/optim.py, utils/train/scheduler.py).
- `v1_release`: the v1 release's numerics, bug-compatible on purpose: fp16
  encoder weights (modules/fp16_encoder.py), BertAdam (utils/train/bert_adam.py),
  its warm-up/cosine on the global progress, weight decay on every name without
  "bias", N(0, 0.02) heads with PyTorch's default PFR convolutions, and
  1/world_size of the true encoder gradient under several processes.
- `v2_release`: the v2 release's method and recipe: its heads and losses
  (modules/rice_v2.py, modules/heads_v2.py: learnable ICL scale, 10·cos PMD
  score from a decoder started from the last CLIP blocks, softmax PFR on
  pre-`ln_post` tokens, unweighted sum), its AdamW (utils/train/adamw_v2.py)
  with the decay rule of v1, its warm-up/cosine, no clipping, fp16 AMP, the v2
  transform, 5000 updates.

A recipe also presets flags (`PRESETS`). Precedence, lowest first: the
parser's defaults, the recipe's presets, the YAML `--config`, `--row`, the
command line. Nothing here imports torch at import time (`--help` stays fast).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

RECIPES = ("modern", "v1_release", "v2_release")
DEFAULT_RECIPE = "modern"
PRESETS: dict[str, dict] = {
    "modern": {},
    # v1 main_task_retrieval.py: lr 3e-4, coef_lr 1e-3, weight decay 0.2, warm-up proportion 0.1,
    # global clip 1.0, 10 frames; precision "fp32" here means no autocast: the encoder weights are fp16.
    "v1_release": {"lr": 3e-4, "coef_lr": 1e-3, "weight_decay": 0.2, "clip_grad_norm": 1.0,
                   "warmup_proportion": 0.1, "precision": "fp32", "transform_style": "v1", "max_frames": 10},
    # v2 projects/*/configs: encoder lr 1e-6 and heads x100, weight decay 0.2, 5000 updates with 500
    # warm-up, no clipping, fp16 AMP, batch 96, 10 frames, the v2 transform.
    "v2_release": {"lr": 1e-4, "coef_lr": 1e-2, "weight_decay": 0.2, "clip_grad_norm": 0.0,
                   "warmup_proportion": 0.1, "precision": "fp16", "transform_style": "v2", "max_frames": 10,
                   "max_steps": 5000, "batch_size": 96},
}
# v2's AdamW betas: (0.9, 0.999) on LPR4M, (0.9, 0.98) on MovingFashion (its configs); eps 1e-6.
V2_BETAS = {"movingfashion": (0.9, 0.98)}
V2_DEFAULT_BETAS = (0.9, 0.999)
RECIPE_HELP = ("modern: this project's exact recipe (fp32 master weights, AdamW, exact global-batch gradient); "
               "v1_release: the v1 release's numerics, bug-compatible (fp16 encoder weights, BertAdam, its "
               "schedule, decay rule, init and 1/world_size encoder gradient); v2_release: the v2 release's "
               "heads, losses, optimizer and schedule (fp16 AMP: on a CPU pass --precision fp32). A recipe "
               "presets flags that --config and the command line can still change (docs/recipes.md)")
ENCODER_PREFIX = "visual."


def recipe_presets(parser: argparse.ArgumentParser, argv: list[str] | None, config_values: dict) -> None:
    """Make the chosen recipe's presets the parser's defaults (the config and command line still win)."""
    pre, _ = parser.parse_known_args(argv)
    name = pre.recipe or config_values.get("recipe") or DEFAULT_RECIPE
    parser.set_defaults(**PRESETS[name])


def check_recipe_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve the recipe name; usage errors for flags the recipe cannot honour."""
    args.recipe = args.recipe or DEFAULT_RECIPE
    if args.recipe == "v1_release" and args.precision != "fp32":
        parser.error(f"--recipe v1_release trains fp16 encoder weights without autocast, as the v1 release did; "
                     f"--precision {args.precision} would change that: pass --precision fp32 (the recipe's preset; "
                     "a --config of another recipe may have set it)")
    if args.recipe == "v2_release" and getattr(args, "init_model", None):
        parser.error("--recipe v2_release starts from CLIP (--pretrained_clip) or random weights; --init_model "
                     "is not supported with it")


def model_class(recipe: str):
    """(the model class, RICEConfig fields) a recipe trains."""
    if recipe == "v2_release":
        from modules.rice_v2 import RICEv2Model

        return RICEv2Model, {"head_style": "v2", "video_pooling": "v2"}
    from modules.rice import RICEModel

    return RICEModel, {}


# --------------------------------------------------------------------------- model


def init_heads(model: nn.Module, recipe: str) -> None:
    """The recipe's initialisation of the new modules, applied before any checkpoint is loaded.

    v1_release: every Linear and Embedding of the heads N(0, 0.02) with zero
    biases, LayerNorms at 1 and 0, and the PFR convolutions at PyTorch's default
    (v1 initialised only Linear, Embedding and its LayerNorm class). `modern`
    keeps the modules' own initialisation.
    """
    if recipe == "v2_release":
        model.init_decoder()  # from the encoder's last blocks (again after a CLIP load)
        return
    if recipe != "v1_release":
        return
    import torch
    from torch import nn

    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("visual") or name == "":
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Conv2d):
                module.reset_parameters()


def prepare_model(model: nn.Module, recipe: str, world_size: int) -> None:
    """Changes a recipe makes to a built model on its device, before the optimizer and DDP see it.

    v1_release: the encoder weights become fp16 (modules/fp16_encoder.py), and
    with several processes each encoder gradient is scaled by 1/world_size: v1's
    all-gather returned the local slice of the gradient without summing it over
    processes, and every process computed the losses of the whole gathered
    batch, so after the processes' mean the encoder received 1/world_size of the
    true gradient while the heads received all of it. The hooks scale each
    encoder parameter's gradient as it is computed (before the mean over
    processes and before clipping; both are linear), which gives v1's update
    from this project's exact gradient.
    """
    if recipe != "v1_release":
        return
    from modules.fp16_encoder import convert_encoder_to_fp16

    convert_encoder_to_fp16(model.visual)
    if world_size > 1:
        scale = 1.0 / world_size
        for param in model.visual.parameters():
            param.register_hook(lambda grad: grad * scale)


# --------------------------------------------------------------------------- optimizer


def v1_decays(name: str) -> bool:
    """v1's weight-decay rule: every parameter whose name lacks "bias".

    v1 also exempted names containing "LayerNorm.weight"/"LayerNorm.bias", which
    no CLIP or PMD name contains: LayerNorm weights, `class_embedding`,
    `positional_embedding` and the PMD position table are decayed.
    """
    return "bias" not in name


def _release_groups(model: nn.Module, lr: float, coef_lr: float, weight_decay: float, slow) -> list[dict]:
    """Four groups {slow (lr · coef_lr): `slow(name)`, fast (lr)} × {decay (`v1_decays`), no decay}."""
    buckets: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((slow(name), v1_decays(name)), []).append(param)
    groups = []
    for (is_slow, decay), params in sorted(buckets.items(), reverse=True):
        base_lr = lr * coef_lr if is_slow else lr
        groups.append({"params": params, "name": f"{'encoder' if is_slow else 'heads'}_{'decay' if decay else 'no_decay'}",
                       "lr": base_lr, "base_lr": base_lr, "weight_decay": weight_decay if decay else 0.0})
    return groups


def v1_param_groups(model: nn.Module, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
    """v1's four groups: {encoder (lr · coef_lr), heads (lr)} × {decay 0.2 (`v1_decays`), no decay}."""
    return _release_groups(model, lr, coef_lr, weight_decay, lambda name: name.startswith(ENCODER_PREFIX))


def v2_param_groups(model: nn.Module, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
    """v2's groups: the decoder and heads at `lr` (v2: 1e-6 x 100), the encoder and the ICL scale
    `logit_scale` at `lr · coef_lr` (v2's base rate: its name matched none of v2's faster patterns);
    decay as v1's rule (`v1_decays`)."""
    return _release_groups(model, lr, coef_lr, weight_decay,
                           lambda name: name.startswith(ENCODER_PREFIX) or name == "logit_scale")


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model`'s trainable parameters."""
    if args.recipe == "v1_release":
        from utils.train.bert_adam import BertAdam

        groups = v1_param_groups(model, args.lr, args.coef_lr, args.weight_decay)
        # v1: BertAdam(b1=0.9, b2=0.98, e=1e-6, max_grad_norm=1.0) after a global clip to 1.0
        return BertAdam(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6, max_grad_norm=1.0)
    if args.recipe == "v2_release":
        from utils.train.adamw_v2 import AdamWv2

        groups = v2_param_groups(model, args.lr, args.coef_lr, args.weight_decay)
        return AdamWv2(groups, lr=args.lr, betas=V2_BETAS.get(args.dataset, V2_DEFAULT_BETAS), eps=1e-6)
    from utils.train.optim import build_optimizer as build_adamw

    return build_adamw(model, args.lr, args.coef_lr, args.weight_decay)


def v1_warmup_proportion(args: argparse.Namespace) -> float | None:
    """The warm-up proportion of v1's schedule under v1_release (utils/train/scheduler.py), else None."""
    return args.warmup_proportion if args.recipe == "v1_release" else None
