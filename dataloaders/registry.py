"""The data sets the command lines know, by name: how to find, load and validate each.

    spec = DATASETS["lpr4m"]
    pairs = spec.load_train(root, args)      # training pairs
    split = spec.load_test(root, args)       # the test protocol's queries and gallery

`args` is the parsed command line (an argparse namespace); each loader reads
the optional file flags it understands (`--index`, `--query_file`, ...) and
ignores the others. Adding a data set means adding one entry here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .lpr4m import load_lpr4m_test, load_lpr4m_train, load_lpr4m_validation
from .movingfashion import load_movingfashion_test, load_movingfashion_train
from .records import RetrievalSplit, TrainPair

logger = logging.getLogger(__name__)


def _opt(args, name: str):
    return getattr(args, name, None)


def _lpr4m_train(root: Path, args) -> Sequence[TrainPair]:
    return load_lpr4m_train(root, "train", annotation=_opt(args, "train_annotation"), index=_opt(args, "index"))


def _lpr4m_test(root: Path, args) -> RetrievalSplit:
    return load_lpr4m_test(root, query_file=_opt(args, "query_file"), gallery_file=_opt(args, "gallery_file"),
                           gt_file=_opt(args, "gt_file"), frames_file=_opt(args, "frames_file"),
                           index=_opt(args, "index"))


def _lpr4m_validation(root: Path, args) -> RetrievalSplit:
    return load_lpr4m_validation(root, index=_opt(args, "index"), max_queries=_opt(args, "val_max_queries"))


def _synthetic_root(data_root: str | None, output_dir: str | Path, create: bool) -> Path:
    """The LPR-layout root of the synthetic set: DATA_ROOT/lpr4m, or OUTPUT_DIR/synthetic_data/lpr4m.

    With `create` (one process of a run), the set is generated there first if absent.
    """
    base = Path(data_root) if data_root else Path(output_dir) / "synthetic_data"
    root = base / "lpr4m"
    if create and not (root / "annotations").is_dir():
        from .synthetic import make_synthetic_dataset

        logger.info("generating the synthetic dataset in %s", base)
        make_synthetic_dataset(base, seed=0)
    return root


def _given_root(data_root: str | None, output_dir: str | Path, create: bool) -> Path:
    return Path(data_root)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    root: Callable[[str | None, str | Path, bool], Path]  # (data_root, output_dir, create) -> the root to read
    load_train: Callable[[Path, object], Sequence[TrainPair]]
    load_test: Callable[[Path, object], RetrievalSplit]
    load_validation: Callable[[Path, object], RetrievalSplit] | None  # None: the release has no validation split
    needs_data_root: bool = True


DATASETS: dict[str, DatasetSpec] = {
    "lpr4m": DatasetSpec("lpr4m", "LPR750K/LPR4M layout", _given_root, _lpr4m_train, _lpr4m_test,
                         _lpr4m_validation),
    "movingfashion": DatasetSpec("movingfashion", "a prepared MovingFashion root", _given_root,
                                 lambda root, args: load_movingfashion_train(root),
                                 lambda root, args: load_movingfashion_test(root), None),
    "synthetic": DatasetSpec("synthetic", "the built-in synthetic set (generated in --data_root, or in "
                             "OUTPUT_DIR/synthetic_data without one), LPR layout", _synthetic_root, _lpr4m_train,
                             _lpr4m_test, _lpr4m_validation, needs_data_root=False),
}
