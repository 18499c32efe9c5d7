"""Train RICE on LPR4M, MovingFashion or built-in synthetic data.

One process:
    python lpr4m_train.py --dataset lpr4m --data_root /data/lpr750k --pretrained_clip ViT-B-32.pt \\
        --sim_header cross_attention --cross_num_hidden_layers 2 --recons_feat --output_dir runs/pfr
One node, 2 GPUs (the README setting; --batch_size is the GLOBAL batch):
    torchrun --nproc_per_node 2 lpr4m_train.py --config configs/lpr4m_icl_pmd_pfr.yaml --data_root ...
Several nodes: the same on each machine with --nnodes, --node_rank and a c10d
rendezvous endpoint (scripts/train_common.sh does this from NNODES, NODE_RANK,
MASTER_ADDR, MASTER_PORT). Interrupted runs continue with --resume latest.
A CPU run on synthetic data with a tiny encoder:
    python lpr4m_train.py --dataset synthetic --model_config tiny --max_frames 4 --batch_size 16 --max_steps 50
"""

from __future__ import annotations

import logging
import sys

from dataloaders import DataError
from modules.checkpoint import CheckpointError
from utils.distributed import cleanup_distributed, init_distributed
from utils.params import parse_args
from utils.trainer import TrainingError, train


def main(argv: list[str] | None = None) -> dict:
    """Parse argv, join torchrun's process group if any, train. Returns train()'s summary."""
    args = parse_args(argv)
    env = init_distributed(args.device)
    level = logging.INFO if env.is_main else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s")
    try:
        return train(args, env)
    except (TrainingError, DataError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
