"""Worker for tests/test_distributed_step.py: one DDP step of RICEModel on this rank's shard.

Run by `torchrun --nproc_per_node N tests/dist_step_worker.py IN OUT`. IN holds the
model config, its weights and the whole batch; rank r takes pairs
[r·B/N, (r+1)·B/N). Rank 0 writes the losses (averaged over ranks), the
gradients (averaged over ranks by DDP), and the gradients of the same step
taken through the gradient-accumulation path (one pair per micro-batch) to OUT.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from modules.rice import RICEConfig, RICEModel
from tests.worker_exit import exit_after_teardown
from utils.runtime.distributed import all_reduce_mean, get_rank, get_world_size
from utils.runtime.precision import Precision
from utils.train.engine import _accumulated_backward


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
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    # The same step through the gradient cache of --gradient_accumulation_steps (one pair per micro-batch).
    model.zero_grad()
    shard_size = shard.stop - shard.start
    _accumulated_backward(ddp, data["images"][shard], data["frames"][shard], data["frame_mask"][shard],
                          Precision("fp32", torch.device("cpu")), accumulation=shard_size)
    accumulated = {k: p.grad.clone() for k, p in model.named_parameters()}
    if rank == 0:
        torch.save({"losses": losses, "grads": grads, "accumulated_grads": accumulated, "world_size": world},
                   out_path)
    dist.barrier()  # every rank done, the DDP reducer gone, then the group (see recipe_grad_worker.py)
    del ddp
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_after_teardown()
