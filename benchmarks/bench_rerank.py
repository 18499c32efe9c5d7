"""How many embedding candidates should PMD re-rank? A measurement on synthetic data.

Trains a tiny ICL+PMD model for a few hundred steps on the synthetic LPR4M
training pairs (CPU, a minute or two), saves it in our checkpoint format, then
runs lpr4m_embedding_eval.py on the synthetic test set with several
--rerank_topk values and prints, per K: the embedding recall@K (the ceiling
of re-ranked R1), the re-ranked R1/R5, and the wall time of the evaluation.

    python benchmarks/bench_rerank.py [--steps 200] [--work_dir /tmp/bench_rerank]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lpr4m_embedding_eval  # noqa: E402
from dataloaders.datasets import PairDataset, collate_samples  # noqa: E402
from dataloaders.lpr4m import load_lpr4m_train  # noqa: E402
from dataloaders.synthetic import make_synthetic_dataset  # noqa: E402
from dataloaders.transforms import build_transform  # noqa: E402
from modules.config import VISION_CONFIGS  # noqa: E402
from modules.rice import RICEConfig, RICEModel  # noqa: E402


def train_tiny_model(data_root: str, steps: int, out: Path) -> Path:
    torch.manual_seed(0)
    config = RICEConfig(VISION_CONFIGS["tiny"], sim_header="cross_attention")
    model = RICEModel(config).train()
    transform = build_transform("v1", train=True, image_size=config.vision.image_size)
    dataset = PairDataset(load_lpr4m_train(data_root), transform, transform, max_frames=4)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=2, collate_fn=collate_samples,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    step = 0
    while step < steps:
        for batch in loader:
            losses = model(batch["image"], batch["frames"], batch["frame_mask"])
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step}: " + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()), flush=True)
            if step == steps:
                break
    path = out / "tiny_icl_pmd.pt"
    torch.save({"format": "rice-repro", "format_version": 1, "model": model.state_dict(),
                "model_config": config.to_dict()}, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--work_dir", default="/tmp/bench_rerank")
    parser.add_argument("--topk", type=int, nargs="+", default=[3, 5, 10, 20, 36])
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_dataset(work / "data", seed=0, num_test_lives=3, test_clips_per_product=3)
    ckpt = train_tiny_model(data["lpr4m"], args.steps, work)
    common = ["--data_root", data["lpr4m"], "--ckpt_path", str(ckpt), "--num_workers", "2", "--no_progress",
              "--sim_header", "cross_attention"]
    rows = []
    for k in args.topk:
        start = time.perf_counter()
        m = lpr4m_embedding_eval.main([*common, "--rerank_topk", str(k), "--output_dir", str(work / f"k{k}")])
        rows.append((k, m, time.perf_counter() - start))
    start = time.perf_counter()
    emb = lpr4m_embedding_eval.main([*common, "--embedding_sim", "--output_dir", str(work / "embedding")])
    emb_s = time.perf_counter() - start
    print(f"\n{emb['num_queries']} queries, galleries of {emb['num_gallery_images'] // 3} images per livestream")
    print(f"embedding only: R1={emb['R1']:.2f} R5={emb['R5']:.2f} R10={emb['R10']:.2f} ({emb_s:.1f}s)")
    print(f"{'K':>4} {'re-ranked R1':>13} {'R5':>7} {'time':>7}")
    for k, m, seconds in rows:
        print(f"{k:>4} {m['R1']:>13.2f} {m['R5']:>7.2f} {seconds:>6.1f}s")


if __name__ == "__main__":
    main()
