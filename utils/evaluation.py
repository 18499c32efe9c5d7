"""Evaluation shared by lpr4m_embedding_eval.py and movingfashion_eval.py.

Steps (SPEC §2):
  1. read the checkpoint (OpenAI, RICE v1, RICE v2 or ours) and check the
     command-line flags against what it holds;
  2. encode every distinct gallery image and every query clip once, split
     over the processes (utils.features);
  3. rank each query's gallery by embedding cosine (utils.metrics): per
     livestream for LPR4M, one global gallery for MovingFashion;
  4. optionally re-rank each query's top-K with the PMD pair score
     (utils.rerank);
  5. write metrics.json, rankings.jsonl (and features.npz) and print a table
     (utils.eval_report).

Processes: `--n_gpu N` spawns N workers when N GPUs are visible; under
torchrun the launcher's world is used; otherwise one process (GPU or CPU).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dataloaders import (ClipDataset, DataError, GalleryImage, ImageDataset, build_transform, collate_samples,
                         load_lpr4m_test, load_movingfashion_test)
from modules.checkpoint import CheckpointError, load_checkpoint
from modules.rice import RICEModel
from utils.eval_report import print_table, read_metrics, write_outputs
from utils.features import PRECISIONS, Runtime, extract_features
from utils.metrics import Ranking, first_hit_ranks, rank_gallery, recall_at_k
from utils.rerank import pmd_scores, rerank

DATASETS = {"lpr4m": "LPR4M (one gallery per livestream)", "movingfashion": "MovingFashion (one global gallery)"}
RANKING_DEPTH = 10  # rankings keep at least the top 10 (R10)


def build_parser(dataset: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Evaluate a RICE checkpoint on {DATASETS[dataset]}: R1/R3/R5/R10 video-to-shop retrieval.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data and checkpoint")
    data.add_argument("--data_root", required=True, help=f"{dataset} test data root (release layout, SPEC §6)")
    data.add_argument("--ckpt_path", required=True, help="checkpoint: OpenAI CLIP .pt, RICE v1 "
                      "pytorch_model.bin.*, RICE v2 rice_final.pth, or one written by lpr4m_train.py")
    data.add_argument("--output_dir", default=f"outputs/eval_{dataset}",
                      help="where metrics.json, rankings.jsonl and features.npz go")
    data.add_argument("--max_frames", type=int, default=10, help="frames per query clip (uniformly sampled)")
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
    model = parser.add_argument_group("model row (must agree with the checkpoint)")
    model.add_argument("--sim_header", choices=["mean_pooling", "cross_attention"], default="mean_pooling",
                       help="mean_pooling: the ICL model (encoder only); cross_attention: the checkpoint's PMD "
                       "head is loaded and, unless --embedding_sim, re-ranks the embedding top-K")
    model.add_argument("--cross_num_hidden_layers", type=int, default=2,
                       help="PMD depth; with cross_attention it must match the checkpoint")
    model.add_argument("--recons_feat", action="store_true",
                       help="the ICL+PMD+PFR row: the checkpoint must hold PFR weights (PFR itself is a "
                       "training loss and does not change scoring)")
    model.add_argument("--one_stage", action="store_true",
                       help="one retrieval stage: rank by embedding only, never re-rank with PMD")
    model.add_argument("--embedding_sim", action="store_true",
                       help="rank by embedding cosine only (how the released numbers were measured)")
    model.add_argument("--rerank_topk", type=int, default=5,
                       help="with PMD re-ranking: how many embedding candidates per query PMD re-orders; R_k for "
                       "k >= K is unchanged, R1 can rise at most to the embedding R_K (default 5 chosen with "
                       "benchmarks/bench_rerank.py: cost grows linearly with K)")
    run = parser.add_argument_group("devices and speed")
    run.add_argument("--n_gpu", type=int, default=1,
                     help="processes/GPUs for feature extraction; fewer visible GPUs -> uses those (CPU if none)")
    run.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="encoder compute precision")
    run.add_argument("--batch_size", type=int, default=16,
                     help="query clips per batch (gallery batches hold batch_size x max_frames images)")
    run.add_argument("--num_workers", type=int, default=4, help="data loading processes per GPU process")
    run.add_argument("--save_features", action="store_true",
                     help="also write features.npz (query/gallery ids and L2-normalised features)")
    run.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that are wrong whatever the checkpoint."""
    for name in ("n_gpu", "batch_size", "max_frames", "rerank_topk", "cross_num_hidden_layers"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        raise SystemExit(f"error: --num_workers must be >= 0, got {args.num_workers}")
    if args.recons_feat and args.sim_header != "cross_attention":
        raise SystemExit("error: --recons_feat (PFR) needs --sim_header cross_attention: PFR is built on the PMD head")


class FlagError(ValueError):
    """Command-line flags that contradict the checkpoint or the machine."""


def model_overrides(args: argparse.Namespace, ckpt) -> tuple[dict, list[str]]:
    """Check the flags against the checkpoint; return RICEConfig overrides and notes.

    Raises FlagError when the flags ask for heads the checkpoint lacks or
    describe them differently.
    """
    heads, notes = ckpt.heads, []
    has_pmd = heads is not None and heads.sim_header == "cross_attention"
    if args.sim_header == "mean_pooling":
        if has_pmd:
            notes.append(f"{ckpt.path} holds a PMD head; --sim_header mean_pooling evaluates its encoder only")
        return ({"sim_header": "mean_pooling", "recons_feat": False} if has_pmd else {}), notes
    if not has_pmd:
        raise FlagError(
            f"--sim_header cross_attention, but {ckpt.path} ({ckpt.format}) has no PMD head (no 'cross.*' "
            "weights); evaluate it with --sim_header mean_pooling --one_stage (the ICL row)"
        )
    if heads.cross_num_hidden_layers != args.cross_num_hidden_layers:
        raise FlagError(
            f"--cross_num_hidden_layers {args.cross_num_hidden_layers}, but the PMD head in {ckpt.path} has "
            f"{heads.cross_num_hidden_layers}; pass --cross_num_hidden_layers {heads.cross_num_hidden_layers}"
        )
    if args.recons_feat and not heads.recons_feat:
        raise FlagError(
            f"--recons_feat, but {ckpt.path} has no PFR weights ('recons_weights.*'): it is an ICL+PMD "
            "checkpoint; drop --recons_feat"
        )
    if heads.recons_feat and not args.recons_feat:
        notes.append(f"{ckpt.path} also holds PFR weights (the ICL+PMD+PFR row); pass --recons_feat to say so")
    return {"recons_feat": False}, notes  # PFR is a training loss: never needed to score


def _load_split(dataset: str, args: argparse.Namespace):
    if dataset == "movingfashion":
        return load_movingfashion_test(args.data_root)
    return load_lpr4m_test(args.data_root, query_file=args.query_file, gallery_file=args.gallery_file,
                           gt_file=args.gt_file, frames_file=args.frames_file, index=args.index)


def evaluate(args: argparse.Namespace, dataset: str, runtime: Runtime) -> dict | None:
    """Run the whole evaluation in this process; returns the metrics on the main process."""
    if args.precision == "fp16" and runtime.device.type == "cpu":
        raise FlagError("--precision fp16 needs a GPU (on the CPU it gave NaN features); use bf16 or fp32 on the CPU")
    ckpt = load_checkpoint(args.ckpt_path)
    overrides, notes = model_overrides(args, ckpt)
    for note in notes:
        runtime.log(f"note: {note}")
    model = RICEModel.from_checkpoint(ckpt, overrides).to(runtime.device).eval()
    config = model.config
    do_rerank = args.sim_header == "cross_attention" and not (args.embedding_sim or args.one_stage)
    runtime.log(
        f"checkpoint {ckpt.path}: format {ckpt.format}, {config.vision.image_size}px, width {config.vision.width}, "
        f"{config.vision.layers} layers; {config.video_pooling} transform and pooling; "
        + (f"PMD re-ranking of the top {args.rerank_topk}" if do_rerank else "embedding ranking")
    )

    split = _load_split(dataset, args)
    if not split.queries or not split.gallery:
        raise DataError(f"{args.data_root}: found {len(split.queries)} queries and {len(split.gallery)} gallery "
                        "images; check --data_root")
    found = retrieve(model, split, runtime, max_frames=args.max_frames, batch_size=args.batch_size,
                     num_workers=args.num_workers, rerank_topk=args.rerank_topk if do_rerank else None,
                     where=args.data_root)
    results, ranking, pmd = found.results, found.ranking, found.pmd
    query_ok, usable, query_feats, gallery_feats = found.query_ok, found.usable, found.query_feats, found.gallery_feats

    if not runtime.is_main:
        return None
    counts = {
        "num_queries": len(split.queries),
        "num_missing_queries": int((~query_ok).sum()),
        "num_gallery_images": len(split.gallery),
        "num_missing_gallery_images": int((~usable).sum()),
    }
    info = {"dataset": dataset, "checkpoint": str(ckpt.path), "checkpoint_format": ckpt.format,
            "video_pooling": config.video_pooling}
    metrics = write_outputs(
        Path(args.output_dir), args, info, counts, results, split, ranking, pmd,
        (query_feats, query_ok, gallery_feats, usable) if args.save_features else None,
    )
    print_table(metrics)
    return metrics


@dataclass
class Retrieval:
    """What `retrieve` found: metrics and ranking, plus the features behind them."""

    results: dict  # {"embedding": {"R1": ..}, ["reranked": {..}]} in percent
    ranking: Ranking  # final ranking (re-ranked when PMD re-ranking ran)
    pmd: np.ndarray | None  # PMD scores aligned with the ranking, or None
    query_feats: torch.Tensor  # [Q, E]
    query_ok: torch.Tensor  # [Q] bool: the query had a readable frame
    gallery_feats: torch.Tensor  # [G, E], one row per gallery entry
    usable: np.ndarray  # [G] bool: the gallery image could be read


@torch.no_grad()
def retrieve(model: RICEModel, split, runtime: Runtime, *, max_frames: int, batch_size: int, num_workers: int,
             rerank_topk: int | None = None, where: str = "") -> Retrieval:
    """Encode a split's queries and gallery, rank, and optionally re-rank the top K with PMD.

    Runs in every process of the group (the encoding is split between them);
    the results are the same on all. Pass the model in eval mode (dropout
    off). `where` names the data in error messages.
    """
    config = model.config
    transform = build_transform(config.video_pooling, train=False, image_size=config.vision.image_size)
    # Encode each distinct image file once, whatever the galleries that list it.
    image_number: dict[str, int] = {}
    image_of_gallery = np.array([image_number.setdefault(g.path, len(image_number)) for g in split.gallery])
    images = ImageDataset([GalleryImage("", path, "") for path in image_number], transform)
    clips = ClipDataset(split.queries, transform, max_frames=max_frames)
    device = runtime.device

    def encode_images(batch):
        emb, _ = model.encode_images(batch["image"].to(device))
        return emb, batch["ok"]

    def encode_clips(batch):
        mask = batch["frame_mask"].to(device)
        emb, _, _ = model.encode_videos(batch["frames"].to(device), mask)
        return emb, mask.any(dim=1)

    common = dict(runtime=runtime, num_workers=num_workers, collate_fn=collate_samples)
    image_feats, image_ok = extract_features(
        images, encode_images, batch_size=batch_size * max_frames, desc="gallery", **common
    )
    query_feats, query_ok = extract_features(clips, encode_clips, batch_size=batch_size, desc="queries", **common)

    if not (torch.isfinite(image_feats[image_ok]).all() and torch.isfinite(query_feats[query_ok]).all()):
        raise FlagError(f"features contain NaN or inf with --precision {runtime.precision}; try --precision fp32")
    gallery_feats = image_feats[image_of_gallery]
    usable = image_ok.numpy()[image_of_gallery]  # unreadable gallery images cannot be retrieved
    gallery_ids = [g.image_id for g in split.gallery]
    kept = np.flatnonzero(usable)
    if len(kept) == 0:
        raise DataError(f"{where}: none of the {len(split.gallery)} gallery images could be read")
    per_group = split.per_group
    depth = max(RANKING_DEPTH, rerank_topk or 0)
    ranking = rank_gallery(
        query_feats,
        gallery_feats[torch.from_numpy(kept)],
        [gallery_ids[i] for i in kept],
        k=depth,
        query_groups=[q.group for q in split.queries] if per_group else None,
        gallery_groups=[split.gallery[i].group for i in kept] if per_group else None,
        valid_queries=query_ok.numpy(),
    )
    ranking.indices = np.where(ranking.indices >= 0, kept[np.maximum(ranking.indices, 0)], -1)
    if per_group:
        shops = {split.gallery[i].group for i in kept}
        orphans = sum(q.group not in shops for q in split.queries)
        if orphans:
            runtime.log(f"note: {orphans} queries have no readable gallery image in their livestream (misses)")
    gts = [q.gt for q in split.queries]
    results = {"embedding": recall_at_k(first_hit_ranks(ranking, gallery_ids, gts), depth=RANKING_DEPTH)}

    pmd = None
    if rerank_topk:
        raw = pmd_scores(model, ranking, rerank_topk, clips, images, image_of_gallery, runtime, collate_samples,
                         num_workers=num_workers)
        ranking, pmd = rerank(ranking, raw)
        results["reranked"] = recall_at_k(first_hit_ranks(ranking, gallery_ids, gts), depth=RANKING_DEPTH)
    return Retrieval(results, ranking, pmd, query_feats, query_ok, gallery_feats, usable)


# --------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_worker(rank: int, world_size: int, port: int, args: argparse.Namespace, dataset: str) -> None:
    """One of the --n_gpu processes: GPU `rank` with NCCL (gloo on the CPU when CUDA is absent)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        runtime = Runtime(rank, world_size, device, args.precision, not args.no_progress)
        evaluate(args, dataset, runtime)
    finally:
        dist.destroy_process_group()


def main_for(dataset: str, argv: list[str] | None = None) -> dict | None:
    """The entry scripts' main: bad flags, checkpoints or data end with a one-line error."""
    try:
        return run(argv, dataset)
    except (FlagError, CheckpointError, DataError) as e:
        raise SystemExit(f"error: {e}") from None


def run(argv: list[str] | None, dataset: str) -> dict | None:
    """Parse argv, start the processes, evaluate; return the metrics (main process)."""
    args = build_parser(dataset).parse_args(argv)
    check_args(args)
    progress = not args.no_progress
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world > 1:  # started by torchrun: one process per rank already exists
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        runtime = Runtime(dist.get_rank(), env_world, device, args.precision, progress)
        if args.n_gpu != env_world:
            runtime.log(f"note: running under torchrun with {env_world} processes; --n_gpu {args.n_gpu} is not used")
        try:
            evaluate(args, dataset, runtime)
        finally:
            dist.destroy_process_group()
        return read_metrics(Path(args.output_dir)) if runtime.is_main else None

    gpus = torch.cuda.device_count()
    if args.n_gpu > gpus:
        print(f"note: --n_gpu {args.n_gpu} asked but {gpus} GPU(s) visible; using "
              + (f"{gpus} GPU(s)" if gpus else "the CPU in one process"))
    n = min(args.n_gpu, gpus)
    if n > 1:
        model_overrides(args, load_checkpoint(args.ckpt_path))  # bad flags: one clear error, before spawning
        mp.spawn(_spawned_worker, args=(n, _free_port(), args, dataset), nprocs=n, join=True)
        return read_metrics(Path(args.output_dir))
    device = torch.device("cuda", 0) if n == 1 else torch.device("cpu")
    return evaluate(args, dataset, Runtime(0, 1, device, args.precision, progress))
