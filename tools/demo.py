"""The demo: the whole RICE pipeline end to end, on synthetic data by default.

    python tools/demo.py [--output_dir demo_output] [--data_root DIR --pretrained_clip ViT-B-32.pt]

1. data: without --data_root, a synthetic dataset in the LPR750K layout is
   generated (dataloaders.synthetic) under <output_dir>/data, with 13 test
   shops (312 query clips) so that one query is 0.3 points of R1;
2. training: the three ablation rows of the README (ICL, ICL+PMD,
   ICL+PMD+PFR) with `lpr4m_train.main`, each from the same start;
3. evaluation: each trained model with `lpr4m_embedding_eval.main` on the test
   split (per-livestream galleries): the embedding ranking and, for the PMD
   rows, the PMD re-ranking of each query's embedding top 5;
4. a table of R1/R5/R10 (embedding ranking), the re-ranked R1 and the PMD
   training loss at the end beside chance level, written to
   <output_dir>/results.md and printed, and every training loss (total, ICL,
   PMD, PFR) drawn to <output_dir>/curves.png.

Without a pretrained CLIP the encoder starts from random weights, so the demo
trains it at the full learning rate (`--coef_lr 1`); with one, the v1 recipe's
ratio applies unless overridden.

Reproducibility: on the CPU the demo turns on torch's deterministic algorithms,
so two runs on the same machine with the same thread count print the same
table. Another CPU (or thread count, or torch build) sums in another order and
its figures can differ by a few queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from utils.options import ROW_TITLES  # noqa: E402 - after the path set-up

ROWS: dict[str, list[str]] = {title: ["--row", row] for row, title in ROW_TITLES.items()}  # README title -> flags
KS = (1, 5, 10)
# The curves: log key -> panel title. PMD picks the true clip among itself and 3 hard negatives
# (RICEConfig.num_hard_negatives), so a PMD that has learned nothing sits at ln 4.
LOSS_PANELS = (("loss", "total loss"), ("icl", "ICL"), ("pmd", "PMD"), ("pfr", "PFR (mean squared error)"))
PMD_CHANCE_LOSS = math.log(4)
LOG_EVERY = 10  # steps between log.jsonl records
END_RECORDS = 5  # the "final" PMD loss is the mean of the last 5 records (50 steps): one batch is noisy
RERANK_TOPK = 5  # lpr4m_embedding_eval's --rerank_topk default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="demo_output", help="where data, runs, results.md and curves.png go")
    p.add_argument("--data_root", default=None,
                   help="an LPR750K-layout data root; default: generate synthetic data under <output_dir>/data")
    p.add_argument("--pretrained_clip", default=None, help="local OpenAI CLIP checkpoint (e.g. ViT-B-32.pt)")
    p.add_argument("--model_config", default="tiny",
                   help="vision tower shape when no --pretrained_clip is given (default: tiny, 64 px)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="ablation rows to run")
    # Many cheap steps rather than few large ones: PMD only learns to tell the true clip from its
    # hard negatives after ICL has fitted the training pairs (about step 700 at batch 16). With
    # 300 steps of 32 pairs x 4 frames its loss stayed at chance (ln 4) to the end; 1500 steps of
    # 16 pairs x 1 frame cost about the same (32 instead of 160 images a step) and bring it well
    # below. With 1 frame a training clip is its first frame; evaluation still uses up to 10 frames
    # per query clip.
    p.add_argument("--max_steps", type=int, default=1500, help="optimizer steps per row")
    p.add_argument("--batch_size", type=int, default=16, help="global batch of pairs")
    p.add_argument("--max_frames", type=int, default=1,
                   help="frames per training clip, evenly spaced (1: its first frame)")
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
    p.add_argument("--synthetic_test_lives", type=int, default=13,
                   help="test livestreams (shops) of the generated dataset: 12 products x 2 query clips each")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def synthetic_options(args: argparse.Namespace) -> dict:
    """Arguments of `make_synthetic_dataset` for the demo's data.

    The generator's defaults (also used by the tests) give 3 test shops, 72 queries: one query
    is 1.4 points of R1. The demo asks for more test shops, e.g. 13 -> 312 queries (0.3 points
    each); the training split is the generator's unless --synthetic_train_lives says otherwise.
    """
    options = {"seed": args.synthetic_seed, "num_test_lives": args.synthetic_test_lives}
    if args.synthetic_train_lives is not None:
        options["num_train_lives"] = args.synthetic_train_lives
    return options


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


def plot_runs(logs: dict[str, Path], output: Path) -> dict[str, list[str]]:
    """Every training loss of every row against the step: one panel per loss, one colour per row.

    Panels: total, ICL, PMD (with its chance level ln 4 = 1.386 for the true clip among
    1 + 3 hard-negative candidates) and PFR. A row without a loss leaves no line in that panel.
    Returns what was drawn: {loss key: [rows with a line in its panel]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.train.logs import read_log

    drawn: dict[str, list[str]] = {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (key, title) in zip(axes.flat, LOSS_PANELS):
        drawn[key] = []
        for color, (name, path) in zip(("C0", "C1", "C2"), logs.items()):
            records = [r for r in read_log(path) if isinstance(r.get(key), (int, float))]
            if records:
                ax.plot([r["step"] for r in records], [r[key] for r in records], color=color, label=name)
                drawn[key].append(name)
        if key == "pmd":
            ax.axhline(PMD_CHANCE_LOSS, color="k", linestyle=":", label="chance (ln 4)")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return drawn


def final_loss(log: Path, key: str, last: int = END_RECORDS) -> float | None:
    """Mean of `key` over the last `last` logged training records (one batch each, so noisy alone)."""
    from utils.train.logs import read_log

    values = [r[key] for r in read_log(log) if isinstance(r.get(key), (int, float))][-last:]
    return sum(values) / len(values) if values else None


def format_table(results: dict[str, dict], chance: dict[str, float]) -> str:
    """R1/R5/R10 of the embedding ranking; for PMD rows also R1 after PMD re-ranking and the final PMD loss.

    The final PMD loss is the mean of the last END_RECORDS logged batches (the last 50 steps).
    """
    head = ("| model | " + " | ".join(f"R{k}" for k in KS)
            + f" | R1, PMD re-ranked (top {RERANK_TOPK}) | PMD loss at the end |")
    lines = [head, "|" + "---|" * (len(KS) + 3)]
    for name, metrics in results.items():
        reranked = f"{metrics['reranked']['R1']:.2f}" if "reranked" in metrics else "–"
        pmd = f"{metrics['pmd_loss_end']:.3f}" if metrics.get("pmd_loss_end") is not None else "–"
        lines.append(f"| {name} | " + " | ".join(f"{metrics[f'R{k}']:.2f}" for k in KS) + f" | {reranked} | {pmd} |")
    lines.append("| chance | " + " | ".join(f"{chance[f'R{k}']:.2f}" for k in KS)
                 + f" | {chance['R1']:.2f} | {PMD_CHANCE_LOSS:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch  # here, so `--help` is instant and importing this module has no cost

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if not torch.cuda.is_available():
        # Run-to-run reproducibility on the CPU. The PMD pair gathers (x[index] with repeated
        # indices in modules/rice.py and modules/heads.py) are backpropagated by index_put_ with
        # accumulation, which with 2+ threads adds rows in whatever order the threads reach them:
        # training drifted by 1e-6 within 5 steps and R1 by a few queries at the end. Deterministic
        # mode adds them in a fixed order; it costs nothing measurable here. (Not on GPUs: there
        # it would need CUBLAS_WORKSPACE_CONFIG and would refuse some kernels.)
        torch.use_deterministic_algorithms(True)
    try:
        return _run(args)
    finally:  # the caller's setting again (the demo also runs inside other programs, e.g. the tests)
        torch.use_deterministic_algorithms(was_deterministic)


def _run(args: argparse.Namespace) -> dict:
    """Data, the three rows' training and evaluation, the table and the curves."""
    import lpr4m_embedding_eval
    import lpr4m_train
    from dataloaders.lpr4m import load_lpr4m_test
    from dataloaders.synthetic import make_synthetic_dataset

    out = Path(args.output_dir)
    start = time.time()
    if args.data_root is None:
        synthetic_root = out / "data"
        data_root = synthetic_root / "lpr4m"
        options = synthetic_options(args)
        marker = synthetic_root / "demo_options.json"  # what the data was generated with
        if not marker.is_file() or json.loads(marker.read_text()) != options:
            if synthetic_root.exists():  # another size or seed (or an older demo's data): start afresh
                shutil.rmtree(synthetic_root)
            print(f"[demo] generating synthetic data in {synthetic_root}", flush=True)
            make_synthetic_dataset(synthetic_root, **options)
            marker.write_text(json.dumps(options, sort_keys=True) + "\n")
    else:
        data_root = Path(args.data_root)

    coef_lr = args.coef_lr if args.coef_lr is not None else (1e-3 if args.pretrained_clip else 1.0)
    common = ["--dataset", "lpr4m", "--data_root", str(data_root), "--max_steps", str(args.max_steps),
              "--batch_size", str(args.batch_size), "--max_frames", str(args.max_frames),
              "--lr", str(args.lr), "--coef_lr", str(coef_lr), "--precision", args.precision,
              "--num_workers", str(args.num_workers), "--seed", str(args.seed),
              "--log_every_steps", str(LOG_EVERY), "--no_tensorboard",
              "--overwrite"]  # a demo rerun replaces its earlier runs (training refuses that otherwise)
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
        # No --embedding_sim: for a PMD row one evaluation gives both the embedding ranking (the
        # released protocol: the table's R1/R5/R10) and the PMD re-ranking of its top K; the ICL
        # row (--one_stage) is ranked by embedding only.
        eval_argv = ["--data_root", str(data_root), "--ckpt_path", trained["model_path"],
                     "--output_dir", str(run_dir / "eval"), "--n_gpu", "1", "--precision", args.precision,
                     "--num_workers", str(args.num_workers), "--rerank_topk", str(RERANK_TOPK)] + ROWS[name]
        if args.no_progress:
            eval_argv.append("--no_progress")
        lpr4m_embedding_eval.main(eval_argv)
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        results[name] = {**metrics["embedding"], "num_queries": metrics["num_queries"],
                         "pmd_loss_end": final_loss(logs[name], "pmd")}
        if "reranked" in metrics:
            results[name]["reranked"] = metrics["reranked"]

    chance = chance_recall(load_lpr4m_test(data_root))
    table = format_table(results, chance)
    minutes = (time.time() - start) / 60
    (out / "results.md").write_text(table + "\n")
    curves = out / "curves.png"
    drawn = plot_runs(logs, curves)
    print(f"\n{table}\n\n[demo] done in {minutes:.1f} min; table: {out / 'results.md'}; curves: {curves}", flush=True)
    return {"results": results, "chance": chance, "table": table, "curves": str(curves), "curves_drawn": drawn}


if __name__ == "__main__":
    main(sys.argv[1:])
