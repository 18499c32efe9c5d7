"""Small helpers over `torch.distributed` that also work without a process group.

With no process group (a plain `python` run, a test, a notebook) every helper
behaves as world size 1: rank 0, gathers are the identity. Under `torchrun`
they act across all processes of the default group.

Gradient convention. `all_gather_with_grad` sends, in the backward pass, the
SUM over processes of the gradients that reach each shard back to the process
that owns it. If every process computes a loss `L_p` on its local rows against
the gathered batch and the optimiser step uses gradients averaged over
processes (what DistributedDataParallel does), the update is exactly the
gradient of `mean_p L_p`: the single-process loss on the whole batch when the
shards have equal size.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from tqdm import tqdm

from utils.errors import ConfigError
from utils.runtime.precision import autocast


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every process's tensor along dim 0, keeping autograd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.size = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every process holds a gradient for the whole gathered tensor; each
        # receives the sum over processes of its own shard's rows (a
        # reduce-scatter: 1/world_size of the traffic of an all-reduce).
        out = grad.new_empty((ctx.size, *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous(), op=dist.ReduceOp.SUM)
        return out


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Gather `x` [B, ...] from all processes into [world_size * B, ...], rank order.

    Gradients flow back to the local shard (see the module docstring). Every
    process must pass the same shape. Identity with no process group.
    """
    if get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Gather `x` [B, ...] from all processes into [world_size * B, ...], no gradient."""
    if get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def average_gradients(grads: list[torch.Tensor], bf16_compress: bool = False) -> None:
    """Replace each gradient by its mean over processes, in one flat all-reduce.

    With `bf16_compress` the buffer travels in bf16 (half the traffic), with
    the same arithmetic as DDP's `bf16_compress_hook`: each process rounds
    its gradient to bf16 and divides by the world size in bf16, the bf16
    values are summed, and the sum is cast back.
    """
    if get_world_size() == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    if bf16_compress:
        wire = flat.to(torch.bfloat16).div_(get_world_size())
        dist.all_reduce(wire)
        flat.copy_(wire)
    else:
        dist.all_reduce(flat)
        flat /= get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def all_reduce_sum(values: list[int], device: torch.device) -> list[int]:
    """Integer counts summed over processes (one all-reduce; the values themselves without a group)."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return total.tolist()


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over processes (a new tensor; for logging losses)."""
    if get_world_size() == 1:
        return x.detach().clone()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when `flag` is True on at least one (the flag itself with no process group)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# --------------------------------------------------------------------------- process set-up


@dataclass
class Runtime:
    """Where this process runs (rank, rank on its machine, world size, device) and how it computes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # for `autocast`
    progress: bool = True  # progress bars on the main process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """Mixed-precision context of `precision` on this device (a no-op in fp32)."""
        return autocast(self.precision, self.device)

    def log(self, message: str) -> None:
        """Print once (on the main process), without breaking tqdm bars."""
        if self.is_main:
            tqdm.write(message)


DEFAULT_TIMEOUT_MIN = 30.0  # a collective waiting longer than this fails instead of hanging


def init_distributed(device: str | None = None, precision: str = "fp32", progress: bool = True,
                     timeout_min: float = DEFAULT_TIMEOUT_MIN) -> Runtime:
    """Join the process group the environment describes, or run alone.

    torchrun (single- or multi-node, any rendezvous) and `spawn` set RANK,
    LOCAL_RANK and WORLD_SIZE; the group is initialised from those with NCCL
    when the process has a GPU and gloo otherwise. Without them this is a
    plain one-process run and no group is created; a task of a multi-task
    `srun` without torchrun is refused (each would train alone). `device` ("cpu" or
    "cuda") forces the device type. A collective that waits longer than
    `timeout_min` minutes (a process died, a node hangs) raises instead of
    blocking forever. On a GPU the group is bound to the process's device
    (`device_id`), so NCCL sets up its communicator at once.
    """
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")  # set by srun for its tasks (not in a salloc shell)
    if "WORLD_SIZE" not in os.environ and "SLURM_PROCID" in os.environ and tasks.isdigit() and int(tasks) > 1:
        raise ConfigError(f"started as one of {tasks} SLURM tasks without torchrun: every task would train alone. "
                          "Start one torchrun per node instead (srun --ntasks-per-node 1 torchrun --nnodes ... "
                          "--nproc_per_node GPUS ...; docs/training.md#gpus-and-clusters)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no GPU is visible (check CUDA_VISIBLE_DEVICES and the driver); "
                          "use --device cpu or leave --device out")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not is_distributed():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=timeout_min), device_id=dev if use_cuda else None)
    return Runtime(rank, local_rank, world_size, dev, precision, progress)


def spawn(fn: Callable, nprocs: int, *args) -> None:
    """Run `fn(*args)` in `nprocs` new processes on this machine, each with torchrun's environment.

    Each process calls `init_distributed` like a torchrun worker; `--n_gpu`
    of the evaluation scripts uses this.
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(nprocs, port, fn, args), nprocs=nprocs, join=True)


def _spawned(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(*args)
    finally:
        cleanup_distributed()


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
