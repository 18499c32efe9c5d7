"""Command-line pieces shared by training and evaluation: the model row flags, `--row`, YAML configs.

Nothing here imports torch, so `--help` of every entry script is fast.

The README rows are named once, in ROWS: `--row icl_pmd_pfr` sets the flags of
that row (`--sim_header`, `--cross_num_hidden_layers`, `--recons_feat`,
`--one_stage`). Precedence, lowest to highest: a parser's defaults, the keys
of a YAML `--config` file (training), the row, the flags on the command line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from modules.config import CROSS_ATTENTION, MEAN_POOLING, SIM_HEADERS, check_heads
from utils.errors import ConfigError
from utils.runtime.resources import default_num_workers

# README row -> the flags that select it (docs/method.md, ablation rows).
ROWS: dict[str, dict] = {
    "icl": {"sim_header": MEAN_POOLING, "one_stage": True, "recons_feat": False},
    "icl_pmd": {"sim_header": CROSS_ATTENTION, "cross_num_hidden_layers": 2, "one_stage": False,
                "recons_feat": False},
    "icl_pmd_pfr": {"sim_header": CROSS_ATTENTION, "cross_num_hidden_layers": 2, "one_stage": False,
                    "recons_feat": True},
}
ROW_TITLES = {"icl": "ICL", "icl_pmd": "ICL+PMD", "icl_pmd_pfr": "ICL+PMD+PFR"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only when there is a default worth showing and the help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


def add_model_args(parser: argparse.ArgumentParser, title: str):
    """The flags that choose the README row (the same names in training and evaluation); returns their group."""
    model = parser.add_argument_group(title)
    model.add_argument("--row", choices=sorted(ROWS),
                       help="a README row: sets --sim_header, --cross_num_hidden_layers, --recons_feat and "
                       "--one_stage as that row does (flags given on the command line still win)")
    model.add_argument("--sim_header", choices=SIM_HEADERS, default=MEAN_POOLING,
                       help=f"{MEAN_POOLING}: ICL only (the encoder); {CROSS_ATTENTION}: adds the pairwise "
                       "matching decoder (PMD)")
    model.add_argument("--cross_num_hidden_layers", type=int, default=2,
                       help="PMD depth L: L-1 self-attention blocks then one cross-attention block")
    model.add_argument("--recons_feat", action="store_true",
                       help=f"patch feature reconstruction (PFR, needs --sim_header {CROSS_ATTENTION}); a "
                       "training loss, it does not change scoring")
    model.add_argument("--one_stage", action="store_true",
                       help="one retrieval stage: rank by embedding only, never re-rank with PMD (evaluation "
                       "and validation)")
    return model


DECODE_CHOICES = ("exact", "draft", "tv")  # dataloaders/transforms.py (no torch import here)


def add_fast_decode(group) -> None:
    """`--decode` (exact, or an opt-in faster decode/resize) and its older spelling `--fast_decode`
    (= `--decode draft`), for training and evaluation alike. `parse` folds them into args.decode."""
    group.add_argument("--decode", choices=DECODE_CHOICES, default=None,
                       help="exact (default): decode every image whole and resize with PIL, the releases' pixels; "
                       "draft: large JPEGs at a reduced DCT scale (PIL draft mode); tv: torchvision's JPEG decoder "
                       "and uint8 antialiased resize: faster, within 1 grey level of exact. "
                       "Measured effects: docs/data.md#decoding")
    group.add_argument("--fast_decode", action="store_true", help="the same as --decode draft")


def resolve_decode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """args.decode from --decode and --fast_decode (a usage error when they disagree)."""
    if not hasattr(args, "decode"):
        return
    if args.fast_decode and args.decode not in (None, "draft"):
        parser.error(f"--fast_decode means --decode draft; it contradicts --decode {args.decode} (give one of them)")
    args.decode = "draft" if args.fast_decode else (args.decode or "exact")


def add_loader_args(group, training: bool) -> None:
    """DataLoader flags beside --num_workers: `--prefetch_factor`, and for training `--persistent_workers`."""
    group.add_argument("--prefetch_factor", type=int, default=None,
                       help="batches each data-loading worker prepares ahead (default: PyTorch's 2); more smooths "
                       "uneven decode times at the cost of shared memory (README, 'Containers and shared memory'); "
                       "ignored with --num_workers 0")
    if training:
        group.add_argument("--persistent_workers", action="store_true",
                           help="keep the data-loading workers from one epoch to the next instead of starting new "
                           "ones (the same batches either way; docs/training.md#data-loading); ignored with "
                           "--num_workers 0")


def add_pmd_chunk_size(group) -> None:
    """`--pmd_chunk_size`, the pairs PMD decodes at once (training and re-ranking alike)."""
    group.add_argument("--pmd_chunk_size", type=int, default=None,
                       help="(image, video) pairs the PMD decoder scores at once, in training and in PMD "
                       "re-ranking: it bounds the decoder's memory and leaves the scores unchanged (only "
                       "training's random dropout draws depend on it). Default: 16 on CPU, 256 on CUDA "
                       "(docs/training.md)")


def load_config(parser: argparse.ArgumentParser, path: str) -> dict:
    """The keys of a YAML config file, checked against the parser (unknown keys and bad choices are errors)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of flag names to values")
    known = {a.dest for a in parser._actions} - {"help", "config"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown} (keys are flag names without '--', "
                          "e.g. sim_header, batch_size)")
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    unset = {a.dest for a in parser._actions if a.default is None}  # None means "not given" (args.yaml)
    for key, value in values.items():
        if key in choices and value not in choices[key] and not (value is None and key in unset):
            raise ConfigError(f"--config {path}: {key}: {value!r} is not one of {list(choices[key])}")
    return values


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse with the precedence of the module docstring; then check the model flags."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        try:
            parser.set_defaults(**load_config(parser, pre.config))
        except ConfigError as err:
            parser.error(str(err))
        pre, _ = parser.parse_known_args(argv)
    if pre.row:
        parser.set_defaults(**ROWS[pre.row])
    args = parser.parse_args(argv)
    resolve_decode(parser, args)
    try:
        check_heads(args.sim_header, args.recons_feat)
    except ConfigError as err:
        parser.error(str(err))
    if args.cross_num_hidden_layers < 1:
        parser.error(f"--cross_num_hidden_layers must be >= 1, got {args.cross_num_hidden_layers}")
    return args


def check_at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, minimum: int, names) -> None:
    """Usage error for any of `names` below `minimum` (None means not given and passes)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {value}")


def resolve_num_workers(args: argparse.Namespace) -> None:
    """`--num_workers` left unset: from the CPUs this process may use (utils/runtime/resources.py)."""
    if args.num_workers is None:
        args.num_workers = default_num_workers()


def check_writable(folder: str | Path, flag: str = "--output_dir") -> None:
    """Create `folder` if needed and prove it takes a file; ConfigError otherwise (before any long work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{flag} {folder} is not writable ({err.strerror or err}); choose a folder you can "
                          "write to") from None
