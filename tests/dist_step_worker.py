"""Worker for tests/test_distributed_step.py: one DDP step of RICEModel on this rank's shard.

Run by `torchrun --nproc_per_node N tests/dist_step_worker.py IN OUT`. IN holds the
model config, its weights and the whole batch; rank r takes pairs
[r·B/N, (r+1)·B/N). Rank 0 writes the losses (averaged over ranks) and the
gradients (averaged over ranks by DDP) to OUT.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from modules.rice import RICEConfig, RICEModel
from utils.distributed import all_reduce_mean, get_rank, get_world_size


def main(argv: list[str]) -> None:
    in_path, out_path = argv
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    data = torch.load(in_path, weights_only=True)
    model = RICEModel(RICEConfig.from_dict(data["config"]))
    model.to(data["images"].dtype).load_state_dict(data["state"])
    model.eval()  # PMD dropout off, as in the single-process reference
    ddp = DistributedDataParallel(model)

    rank, world = get_rank(), get_world_size()
    shard = slice(rank * len(data["images"]) // world, (rank + 1) * len(data["images"]) // world)
    losses = ddp(data["images"][shard], data["frames"][shard], data["frame_mask"][shard])
    losses["loss"].backward()  # DDP averages the gradients over ranks here

    losses = {k: all_reduce_mean(v) for k, v in losses.items()}
    if rank == 0:
        grads = {k: p.grad for k, p in model.named_parameters()}
        torch.save({"losses": losses, "grads": grads, "world_size": world}, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
