"""Worker for tests/test_gpu_distributed.py: the gradient paths of several processes, on gloo.

    torchrun --nproc_per_node 2 tests/gpu_dist_worker.py OUT_DIR

Each rank writes OUT_DIR/rank<R>.pt with what it computed; the test checks
the numbers against oracles built from the same seeds in one process:
  * gather: x.grad through `all_gather_with_grad` (a reduce-scatter in the
    backward pass) and the all-reduce-then-slice it replaces;
  * average: `average_gradients` of two tensors, exact and bf16-compressed;
  * ddp: the gradients of a small DDP model with `gradient_as_bucket_view` and
    the bf16 compression hook, as the trainer builds it;
  * counts: `all_reduce_sum` of counts that only rank 1 has.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from tests.worker_exit import exit_after_teardown
from utils.runtime.distributed import all_gather_with_grad, all_reduce_sum, average_gradients, init_distributed


def seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    runtime = init_distributed("cpu", timeout_min=2)
    rank, world = runtime.rank, runtime.world_size
    backend = dist.group.WORLD._get_backend(torch.device("cpu"))
    out = {"world_size": world, "timeout_s": backend.options._timeout.total_seconds()}

    # Gather: each rank's loss weighs the whole gathered batch with its own weights.
    x = seeded(rank, 3, 4).requires_grad_()
    weights = seeded(100 + rank, 3 * world, 4)
    (all_gather_with_grad(x) * weights).sum().backward()
    before = weights.clone()  # the former backward: all-reduce the whole gradient, keep the own slice
    dist.all_reduce(before)
    out["gather_grad"], out["gather_before"] = x.grad, before[rank * 3:(rank + 1) * 3]

    # Flat gradient averaging (the gradient-accumulation path), exact and bf16.
    for name, compress in (("average_exact", False), ("average_bf16", True)):
        grads = [seeded(200 + rank, 7, 5) * 1e-3, seeded(300 + rank, 11)]
        average_gradients(grads, bf16_compress=compress)
        out[name] = grads

    # DDP as the trainer builds it with --ddp_bf16_compress.
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
    ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    ddp(seeded(400 + rank, 4, 5)).square().sum().backward()
    out["ddp"] = {name: p.grad.clone() for name, p in model.named_parameters()}

    out["counts"] = all_reduce_sum([0, 0] if rank == 0 else [3, 1], runtime.device)
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.barrier()  # every rank done, the DDP reducer gone, then the group (see recipe_grad_worker.py)
    del ddp
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    exit_after_teardown()
