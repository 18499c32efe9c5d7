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

from utils.errors import one_line_errors
from utils.train.params import parse_args


def main(argv: list[str] | None = None) -> dict:
    """Parse argv, join torchrun's process group if any, train. Returns train()'s summary.

    Bad flags, data or checkpoints end with one line `error: ...` and exit code 2.
    """
    args = parse_args(argv)  # before the heavy imports: --help stays fast
    from utils.runtime.distributed import cleanup_distributed, init_distributed
    from utils.train.trainer import train

    with one_line_errors():
        runtime = init_distributed(args.device, precision=args.precision, progress=not args.no_progress,
                                   timeout_min=args.dist_timeout_min)
        level = logging.INFO if runtime.is_main else logging.WARNING
        logging.basicConfig(level=level, format=f"%(asctime)s [rank {runtime.rank}] %(name)s: %(message)s")
        try:
            return train(args, runtime)
        finally:
            cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
