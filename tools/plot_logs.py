"""Draw the training curves of one or more runs of lpr4m_train.py from their log.jsonl.

    python tools/plot_logs.py RUN/log.jsonl [RUN2/log.jsonl ...] [--output PNG]

The picture goes to --output, by default curves.png beside the first log
(RUN/curves.png); the path is printed.

Panels, against the optimizer step, one colour per run (labelled with the run
folder's name):
1. training losses: every key present among `loss` (total, solid), `icl`,
   `pmd`, `pfr` (log scale when all are positive);
2. learning rates `lr_heads` (solid) and `lr_encoder` (dashed), log scale;
3. validation R1 (only when some log has validation records, `{"val": {"R1": ..}}`):
   embedding ranking (solid) and, where logged, PMD re-ranking (`val_reranked`, dashed).

Records without "loss" are not training records (validation records carry
"val"). A resumed run logs again the steps after its last checkpoint; the
later records of a step replace the earlier ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from utils.train.logs import read_log  # noqa: E402  (after the path set-up)

LOSS_KEYS = ("loss", "icl", "pmd", "pfr")
LOSS_STYLES = {"loss": "-", "icl": "--", "pmd": "-.", "pfr": ":"}
LR_KEYS = ("lr_heads", "lr_encoder")
LR_STYLES = {"lr_heads": "-", "lr_encoder": "--"}
# validation keys: embedding ranking; PMD re-ranking of the top K (PMD models without --one_stage)
VAL_STYLES = (("val", "-", "o", "R1"), ("val_reranked", "--", "s", "R1 (PMD re-ranked)"))


def _step(record: dict, path: Path) -> int:
    if not isinstance(record.get("step"), (int, float)):
        raise ValueError(f"{path}: a record has no numeric 'step': {json.dumps(record)[:120]}")
    return record["step"]


def _last_pass(records: list[dict], path: Path) -> list[dict]:
    """Drop records that a later record re-logged (a resumed run restarts at its checkpoint's step)."""
    kept: list[dict] = []
    for record in records:
        step = _step(record, path)
        while kept and kept[-1]["step"] >= step:
            kept.pop()
        kept.append(record)
    return kept


def _labels(paths: list[Path]) -> list[str]:
    """The run folder's name; the whole folder path where two runs share a name."""
    names = [(p.resolve().parent.name or str(p.resolve().parent)) for p in paths]
    return [str(p.parent) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_logs(paths: list[Path], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for path, label in zip(paths, _labels(paths)):
        records = read_log(path)
        train = _last_pass([r for r in records if "loss" in r], path)
        val = _last_pass([r for r in records if isinstance(r.get("val"), dict) and "loss" not in r], path)
        if not train and not val:
            warnings.warn(f"{path}: no training or validation records", stacklevel=2)
        runs.append((label, train, val))
    if not any(train for _, train, _ in runs):
        raise ValueError("no training records (with 'loss') in " + ", ".join(str(p) for p in paths))
    has_val = any(val for _, _, val in runs)

    n = 3 if has_val else 2
    fig, axes = plt.subplots(n, 1, figsize=(9, 3.3 * n), sharex=True)
    ax_loss, ax_lr = axes[0], axes[1]
    all_losses = []
    for i, (label, train, val) in enumerate(runs):
        color = f"C{i % 10}"
        for key in LOSS_KEYS:
            steps, values = _series(train, key)
            if steps:
                all_losses += values
                ax_loss.plot(steps, values, color=color, linestyle=LOSS_STYLES[key], label=f"{label}: {key}")
        for key in LR_KEYS:
            steps, values = _series(train, key)
            if steps:
                ax_lr.plot(steps, values, color=color, linestyle=LR_STYLES[key], label=f"{label}: {key}")
        for key, style, marker, name in VAL_STYLES if has_val else ():
            points = [(r["step"], r[key]["R1"]) for r in val
                      if isinstance(r.get(key), dict) and isinstance(r[key].get("R1"), (int, float))]
            if points:
                axes[2].plot([s for s, _ in points], [v for _, v in points], color=color, linestyle=style,
                             marker=marker, label=f"{label}: {name}")
    if all_losses and min(all_losses) > 0:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss")
    ax_lr.set_yscale("log", nonpositive="mask")
    ax_lr.set_ylabel("learning rate")
    if has_val:
        axes[2].set_ylabel("validation R1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", ncol=2 if len(runs) > 1 else 1)
    axes[-1].set_xlabel("optimizer step")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", type=Path, help="log.jsonl files of training runs")
    p.add_argument("--output", type=Path, default=None,
                   help="the PNG to write (default: curves.png in the folder of the first log)")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        output = plot_logs(args.logs, args.output or args.logs[0].parent / "curves.png")
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"[plot_logs] wrote {output}")
    return output


if __name__ == "__main__":
    main()
