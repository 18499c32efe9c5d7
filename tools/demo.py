"""The demo: the whole RICE pipeline end to end, on synthetic data by default.

    python tools/demo.py [--output_dir demo_output] [--data_root DIR --pretrained_clip ViT-B-32.pt]

1. data: without --data_root, a synthetic dataset in the LPR750K layout is
   generated (dataloaders.synthetic) under <output_dir>/data;
2. training: the three ablation rows of the README (ICL, ICL+PMD,
   ICL+PMD+PFR) with `lpr4m_train.main`, each from the same start;
3. evaluation: each trained model with `lpr4m_embedding_eval.main` on the test
   split (per-livestream galleries, embedding ranking);
4. a table of R1/R5/R10 beside chance level, written to <output_dir>/results.md
   and printed, and the training curves drawn to <output_dir>/curves.png.

Without a pretrained CLIP the encoder starts from random weights, so the demo
trains it at the full learning rate (`--coef_lr 1`); with one, the v1 recipe's
ratio applies unless overridden.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from utils.options import ROW_TITLES  # noqa: E402 - after the path set-up

ROWS: dict[str, list[str]] = {title: ["--row", row] for row, title in ROW_TITLES.items()}  # README title -> flags
KS = (1, 5, 10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="demo_output", help="where data, runs, results.md and curves.png go")
    p.add_argument("--data_root", default=None,
                   help="an LPR750K-layout data root; default: generate synthetic data under <output_dir>/data")
    p.add_argument("--pretrained_clip", default=None, help="local OpenAI CLIP checkpoint (e.g. ViT-B-32.pt)")
    p.add_argument("--model_config", default="tiny",
                   help="vision tower shape when no --pretrained_clip is given (default: tiny, 64 px)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="ablation rows to run")
    p.add_argument("--max_steps", type=int, default=300, help="optimizer steps per row")
    p.add_argument("--batch_size", type=int, default=32, help="global batch of pairs")
    p.add_argument("--max_frames", type=int, default=4, help="frames per training clip")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the new modules")
    p.add_argument("--coef_lr", type=float, default=None,
                   help="encoder lr = lr * coef_lr (default: 1 from random weights, 1e-3 from CLIP)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="training and evaluation precision (bf16 pays off only on CPUs with native bf16)")
    p.add_argument("--num_workers", type=int, default=1, help="data-loading processes")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--synthetic_seed", type=int, default=0, help="seed of the generated dataset")
    p.add_argument("--synthetic_train_lives", type=int, default=None,
                   help="training livestreams of the generated dataset (default: the generator's)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def chance_recall(split, ks=KS) -> dict[str, float]:
    """Expected R@k (percent) of a uniformly random ranking of each query's gallery.

    For a query with g candidates of which n are ground truth, a random order
    misses all of them in the top k with probability C(g-n, k) / C(g, k).
    Queries without any ground truth in their gallery count as misses, as in
    the evaluation itself.
    """
    sizes: dict[str, int] = {}
    members: dict[str, set[str]] = {}
    for image in split.gallery:
        group = image.group if split.per_group else ""
        sizes[group] = sizes.get(group, 0) + 1
        members.setdefault(group, set()).add(image.image_id)
    totals = {k: 0.0 for k in ks}
    for query in split.queries:
        group = query.group if split.per_group else ""
        g = sizes.get(group, 0)
        n = len(set(query.gt) & members.get(group, set()))
        for k in ks:
            if n and g:
                totals[k] += 1.0 - math.comb(g - n, k) / math.comb(g, k) if k < g else 1.0
    return {f"R{k}": 100.0 * totals[k] / max(len(split.queries), 1) for k in ks}


def plot_runs(logs: dict[str, Path], output: Path) -> Path:
    """Training loss of every row against the step, one PNG (total solid, ICL dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.train.logs import read_log

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for color, (name, path) in zip(("C0", "C1", "C2"), logs.items()):
        records = [r for r in read_log(path) if "loss" in r]
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], color=color, label=f"{name}: total loss")
        ax.plot(steps, [r["icl"] for r in records], color=color, linestyle="--", label=f"{name}: ICL")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def format_table(results: dict[str, dict], chance: dict[str, float]) -> str:
    head = "| model | " + " | ".join(f"R{k}" for k in KS) + " |"
    lines = [head, "|" + "---|" * (len(KS) + 1)]
    for name, metrics in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[f'R{k}']:.2f}" for k in KS) + " |")
    lines.append("| chance | " + " | ".join(f"{chance[f'R{k}']:.2f}" for k in KS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Imported here so `--help` is instant and importing this module has no cost.
    import lpr4m_embedding_eval
    import lpr4m_train
    from dataloaders.lpr4m import load_lpr4m_test
    from dataloaders.synthetic import make_synthetic_dataset

    out = Path(args.output_dir)
    start = time.time()
    if args.data_root is None:
        synthetic_root = out / "data"
        data_root = synthetic_root / "lpr4m"
        if not (data_root / "annotations").is_dir():
            print(f"[demo] generating synthetic data in {synthetic_root}", flush=True)
            extra = {} if args.synthetic_train_lives is None else {"num_train_lives": args.synthetic_train_lives}
            make_synthetic_dataset(synthetic_root, seed=args.synthetic_seed, **extra)
    else:
        data_root = Path(args.data_root)

    coef_lr = args.coef_lr if args.coef_lr is not None else (1e-3 if args.pretrained_clip else 1.0)
    common = ["--dataset", "lpr4m", "--data_root", str(data_root), "--max_steps", str(args.max_steps),
              "--batch_size", str(args.batch_size), "--max_frames", str(args.max_frames),
              "--lr", str(args.lr), "--coef_lr", str(coef_lr), "--precision", args.precision,
              "--num_workers", str(args.num_workers), "--seed", str(args.seed),
              "--log_every_steps", "10", "--no_tensorboard"]
    if args.pretrained_clip:
        common += ["--pretrained_clip", args.pretrained_clip]
    else:
        common += ["--model_config", args.model_config]
    if args.no_progress:
        common.append("--no_progress")

    results: dict[str, dict] = {}
    logs: dict[str, Path] = {}
    for name in args.rows:
        run_dir = out / "runs" / name.replace("+", "_")
        print(f"[demo] training {name} ({args.max_steps} steps)", flush=True)
        trained = lpr4m_train.main(common + ROWS[name] + ["--output_dir", str(run_dir)])
        logs[name] = run_dir / "log.jsonl"
        print(f"[demo] evaluating {name}", flush=True)
        eval_argv = ["--data_root", str(data_root), "--ckpt_path", trained["model_path"],
                     "--output_dir", str(run_dir / "eval"), "--embedding_sim", "--n_gpu", "1",
                     "--precision", args.precision, "--num_workers", str(args.num_workers)] + ROWS[name]
        if args.no_progress:
            eval_argv.append("--no_progress")
        lpr4m_embedding_eval.main(eval_argv)
        results[name] = json.loads((run_dir / "eval" / "metrics.json").read_text())

    chance = chance_recall(load_lpr4m_test(data_root))
    table = format_table(results, chance)
    minutes = (time.time() - start) / 60
    (out / "results.md").write_text(table + "\n")
    curves = plot_runs(logs, out / "curves.png")
    print(f"\n{table}\n\n[demo] done in {minutes:.1f} min; table: {out / 'results.md'}; curves: {curves}", flush=True)
    return {"results": results, "chance": chance, "table": table, "curves": str(curves)}


if __name__ == "__main__":
    main(sys.argv[1:])
