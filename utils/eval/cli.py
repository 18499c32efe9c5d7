"""The evaluation command line shared by lpr4m_embedding_eval.py and movingfashion_eval.py.

  1. read the checkpoint (OpenAI, RICE v1, RICE v2 or ours) and check the
     row flags against what it holds (modules/checkpoint.py);
  2. retrieve: encode, rank, optionally re-rank with PMD (utils/eval/retrieval.py);
  3. write metrics.json, rankings.jsonl (and features.npz) and print a table
     (utils/eval/report.py).

Processes: `--n_gpu N` spawns N workers when N GPUs are visible; under
torchrun the launcher's world is used; otherwise one process (GPU or CPU).
This module imports torch only after the flags are parsed, so --help is fast.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from utils.errors import DataError, one_line_errors
from utils.options import (
    HelpFormatter,
    add_fast_decode,
    add_loader_args,
    add_model_args,
    add_pmd_chunk_size,
    check_at_least,
    check_writable,
    parse,
    resolve_num_workers,
)
from utils.runtime.precision import PRECISIONS

DATASETS = {"lpr4m": "LPR4M (one gallery per livestream)", "movingfashion": "MovingFashion (one global gallery)"}


def build_parser(dataset: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{'lpr4m_embedding_eval' if dataset == 'lpr4m' else 'movingfashion_eval'}.py",
        description=f"Evaluate a RICE checkpoint on {DATASETS[dataset]}: R1/R3/R5/R10 video-to-shop retrieval.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data and checkpoint")
    data.add_argument("--data_root", required=True, help=f"{dataset} test data root (layouts: docs/data.md)")
    data.add_argument("--ckpt_path", required=True, help="checkpoint: OpenAI CLIP .pt, RICE v1 "
                      "pytorch_model.bin.*, RICE v2 rice_final.pth, or one written by lpr4m_train.py")
    data.add_argument("--output_dir", default=f"outputs/eval_{dataset}",
                      help="where metrics.json, rankings.jsonl and features.npz go")
    data.add_argument("--max_frames", type=int, default=10, help="frames per query clip (uniformly sampled)")
    add_fast_decode(data)
    if dataset == "lpr4m":
        files = parser.add_argument_group(
            "LPR4M annotation files (default: found by name pattern under DATA_ROOT or DATA_ROOT/annotations)")
        files.add_argument("--query_file", help="release layout: query_tenframes*.json")
        files.add_argument("--gallery_file",
                           help="gallery_main*.txt (release) or test_liveid_to_gallery*.json (with --index)")
        files.add_argument("--gt_file", help="test_videoid_to_gtimage*.json")
        files.add_argument("--frames_file", help="with --index: test_frameid2gtbox*.json (frame ids of the queries)")
        files.add_argument("--index", help="full LPR4M downloaded with img2dataset: the index TSV written by "
                           "tools/index_img2dataset.py (ids are looked up there instead of paths)")
    model = add_model_args(parser, "model row (must agree with the checkpoint)")
    model.add_argument("--embedding_sim", action="store_true",
                       help="rank by embedding cosine only (how the released numbers were measured)")
    model.add_argument("--rerank_topk", type=int, default=5,
                       help="with PMD re-ranking: how many embedding candidates per query PMD re-orders; R_k for "
                       "k >= K is unchanged, R1 can rise at most to the embedding R_K (default 5 chosen with "
                       "benchmarks/bench_rerank.py: cost grows linearly with K)")
    run = parser.add_argument_group("devices and speed")
    run.add_argument("--n_gpu", type=int, default=1,
                     help="processes/GPUs for feature extraction; fewer visible GPUs -> uses those (CPU if none)")
    run.add_argument("--precision", choices=PRECISIONS, default=None,
                     help="encoder compute precision (default: bf16 on a GPU, fp32 on the CPU; embeddings, "
                     "rankings and PMD scores are fp32 either way; --precision fp32 for exact fp32 encoders)")
    run.add_argument("--batch_size", type=int, default=16,
                     help="query clips per batch (gallery batches hold batch_size x max_frames images)")
    run.add_argument("--num_workers", type=int, default=None,
                     help="data loading processes per evaluation process (default: the CPUs this process may use, "
                     "shared among the processes of its machine, less one; at most 8)")
    add_loader_args(run, training=False)
    add_pmd_chunk_size(run)
    run.add_argument("--save_features", action="store_true",
                     help="also write features.npz (query/gallery ids and L2-normalised features)")
    run.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    run.add_argument("--report", action="store_true",
                     help="also write report.html: the worst and a random sample of queries with their frames, "
                     "top-10 gallery images (ground truth marked) and scores, images inlined")
    run.add_argument("--report_queries", type=int, default=10,
                     help="with --report: how many worst and how many random queries it shows (each)")
    return parser


def parse_args(dataset: str, argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser(dataset)
    args = parse(parser, argv)
    check_at_least(parser, args, 1, ("n_gpu", "batch_size", "max_frames", "rerank_topk", "prefetch_factor"))
    check_at_least(parser, args, 0, ("num_workers", "report_queries"))
    check_at_least(parser, args, 1, ("pmd_chunk_size",))
    resolve_num_workers(args)
    return args


def evaluate(args: argparse.Namespace, dataset: str, runtime) -> dict | None:
    """Run the whole evaluation in this process; returns the metrics on the main process."""
    from dataloaders.registry import DATASETS as SPECS
    from modules.checkpoint import load_checkpoint
    from modules.rice import RICEModel
    from utils.eval.report import Outcome, print_table, write_outputs
    from utils.eval.retrieval import retrieve
    from utils.runtime.precision import check_precision, eval_precision

    runtime.precision = args.precision = eval_precision(args.precision, runtime.device)  # recorded in metrics.json
    check_precision(args.precision, runtime.device)
    ckpt = load_checkpoint(args.ckpt_path)
    overrides, notes = ckpt.check_flags(args.sim_header, args.cross_num_hidden_layers, args.recons_feat)
    for note in notes:
        runtime.log(f"note: {note}")
    model = RICEModel.from_checkpoint(ckpt, overrides).to(runtime.device).eval()
    model.set_pmd_chunk_size(args.pmd_chunk_size)
    config = model.config
    do_rerank = config.use_pmd and not (args.embedding_sim or args.one_stage)
    runtime.log(
        f"checkpoint {ckpt.path}: format {ckpt.format}, {config.vision.image_size}px, width {config.vision.width}, "
        f"{config.vision.layers} layers; {config.preprocessing} transform, {config.video_pooling} pooling; "
        + (f"PMD re-ranking of the top {args.rerank_topk}" if do_rerank else "embedding ranking")
    )

    warnings = _untrained_pmd(ckpt, config) if do_rerank else []
    for warning in warnings:
        runtime.log(f"warning: {warning}")

    split = SPECS[dataset].load_test(args.data_root, args)
    if not split.queries or not split.gallery:
        raise DataError(f"{args.data_root}: found {len(split.queries)} queries and {len(split.gallery)} gallery "
                        "images; check --data_root")
    found = retrieve(model, split, runtime, max_frames=args.max_frames, batch_size=args.batch_size,
                     num_workers=args.num_workers, rerank_topk=args.rerank_topk if do_rerank else None,
                     where=args.data_root, decode=args.decode,
                     prefetch_factor=args.prefetch_factor)
    if not runtime.is_main:
        return None
    info = {"dataset": dataset, "checkpoint": str(ckpt.path), "checkpoint_format": ckpt.format,
            "video_pooling": config.video_pooling, **({"warnings": warnings} if warnings else {})}
    metrics = write_outputs(Path(args.output_dir), Outcome(split, found, info, vars(args), args.save_features))
    print_table(metrics)
    if args.report:
        from utils.eval.html_report import read_rankings, write_retrieval_report

        page = write_retrieval_report(Path(args.output_dir), split, read_rankings(Path(args.output_dir)),
                                      args.report_queries, args.report_queries)
        print(f"report: {page}")
    return metrics


UNTRAINED_FRACTION = 0.9  # a final PMD loss above this share of chance counts as "did not learn"


def _untrained_pmd(ckpt, config) -> list[str]:
    """A warning when the checkpoint's own training log says its PMD head stayed near chance.

    PMD picks the true clip among 1 + num_hard_negatives candidates, so an
    untrained head has loss ln(1 + num_hard_negatives); re-ranking with it
    reorders the embedding top-K almost at random. Only files written by
    lpr4m_train.py carry their final losses.
    """
    loss = ckpt.extra.get("final_losses", {}).get("pmd")
    chance = math.log(1 + config.num_hard_negatives)
    if loss is None or loss < UNTRAINED_FRACTION * chance:
        return []
    return [f"the PMD head of {ckpt.path} barely learned (its training loss ended at {loss:.3f}, chance is "
            f"ln {1 + config.num_hard_negatives} = {chance:.3f}): PMD re-ranking is close to random and can lower "
            "R1; pass --embedding_sim to rank by embedding only"]


def _worker(args: argparse.Namespace, dataset: str) -> dict | None:
    """One process of the evaluation (torchrun, `--n_gpu` spawn, or the only one)."""
    from utils.runtime.distributed import init_distributed

    runtime = init_distributed(precision=args.precision, progress=not args.no_progress)
    with one_line_errors():
        return evaluate(args, dataset, runtime)


def run(argv: list[str] | None, dataset: str) -> dict | None:
    """Parse argv, start the processes, evaluate; return the metrics (main process)."""
    args = parse_args(dataset, argv)
    if int(os.environ.get("RANK", "0")) == 0:
        check_writable(args.output_dir)  # before any encoding: the results must have a place to go
    import torch

    from utils.eval.report import read_metrics
    from utils.runtime.distributed import cleanup_distributed, spawn

    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world > 1:  # started by torchrun: one process per rank already exists
        if args.n_gpu != env_world and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: running under torchrun with {env_world} processes; --n_gpu {args.n_gpu} is not used")
        try:
            _worker(args, dataset)
        finally:
            cleanup_distributed()
        return read_metrics(Path(args.output_dir)) if int(os.environ["RANK"]) == 0 else None

    gpus = torch.cuda.device_count()
    if args.n_gpu > gpus:
        print(f"note: --n_gpu {args.n_gpu} asked but {gpus} GPU(s) visible; using "
              + (f"{gpus} GPU(s)" if gpus else "the CPU in one process"))
    n = min(args.n_gpu, gpus)
    if n > 1:
        from modules.checkpoint import load_checkpoint

        # Bad flags: one clear error, before spawning.
        load_checkpoint(args.ckpt_path).check_flags(args.sim_header, args.cross_num_hidden_layers, args.recons_feat)
        spawn(_worker, n, args, dataset)
        return read_metrics(Path(args.output_dir))
    return _worker(args, dataset)


def main_for(dataset: str, argv: list[str] | None = None) -> dict | None:
    """The entry scripts' main: bad flags, checkpoints or data end with a one-line error and exit code 2."""
    with one_line_errors():
        return run(argv, dataset)
