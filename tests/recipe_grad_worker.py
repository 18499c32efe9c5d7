"""Worker for tests/test_recipe_v1_release.py: one DDP backward of a v1_release model on this rank's shard.

Run by `torchrun --nproc_per_node N tests/recipe_grad_worker.py IN OUT RECIPE`. IN holds the
model config, its weights and the whole batch; the model gets the recipe's
changes for N processes (v1_release: fp16 encoder, 1/N encoder gradient;
v2_release: the v2 heads, in the weights' dtype) and rank r takes pairs
[r·B/N, (r+1)·B/N). Rank 0 writes the gradients, averaged over ranks by DDP, to OUT.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from modules.rice import RICEConfig, RICEModel
from modules.rice_v2 import RICEv2Model
from tests.processes import torchrun_two
from tests.worker_exit import exit_after_teardown
from utils.runtime.distributed import get_rank, get_world_size
from utils.train.recipes import prepare_model


def run_two_processes(tmp_path: Path, payload: dict, recipe: str) -> dict:
    """Save `payload` (config, state, images, frames, frame_mask), run this worker under torchrun with
    2 gloo processes and return rank 0's averaged gradients."""
    torch.save(payload, tmp_path / "in.pt")
    torchrun_two(Path(__file__).resolve(), tmp_path / "in.pt", tmp_path / "out.pt", recipe)
    return torch.load(tmp_path / "out.pt", weights_only=True)


def main(argv: list[str]) -> None:
    in_path, out_path, recipe = argv
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    data = torch.load(in_path, weights_only=True)
    config = RICEConfig.from_dict(data["config"])
    model = (RICEv2Model if config.head_style == "v2" else RICEModel)(config)
    model.to(data["state"]["visual.conv1.weight"].dtype).load_state_dict(data["state"])
    rank, world = get_rank(), get_world_size()
    prepare_model(model, recipe, world)
    model.eval()  # PMD dropout off, as in the single-process reference
    ddp = DistributedDataParallel(model)
    size = len(data["images"]) // world
    shard = slice(rank * size, (rank + 1) * size)
    losses = ddp(data["images"][shard], data["frames"][shard], data["frame_mask"][shard])
    losses["loss"].backward()
    if rank == 0:
        torch.save({k: p.grad.clone() for k, p in model.named_parameters()}, out_path)
    # Tear down in order: every rank done, the DDP reducer gone, then the process group (a rank
    # destroying its group under a live reducer can abort at exit).
    dist.barrier()
    del ddp, losses
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_after_teardown()
