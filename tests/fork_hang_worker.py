"""Worker for tests/test_loader.py: DataLoader workers started right after collectives, many times.

Run by `torchrun --nproc_per_node 2 tests/fork_hang_worker.py ROUNDS OUT`. Each round runs a few
all-reduces on fresh tensors (gloo's threads then drop the last references to them, taking
Python's interpreter lock from C++), then makes a DataLoader with one worker from
`loader_options` and reads it through. Workers forked directly from such a process blocked
forever in `os.fork` in 5 of 8 runs of 300 rounds; rank 0 writes OUT (rounds done by all
ranks, the start methods used) when every round of every rank ended.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from dataloaders.datasets import loader_options
from tests.worker_exit import exit_after_teardown


def main(argv: list[str]) -> None:
    rounds, out_path = int(argv[0]), Path(argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    methods = set()
    for _ in range(rounds):
        for _ in range(5):
            dist.all_reduce(torch.ones(3))
        options = loader_options(1)
        methods.add(options["multiprocessing_context"].get_start_method() if "multiprocessing_context" in options
                    else "default")
        batches = [batch.tolist() for batch in DataLoader(range(8), batch_size=4, **options)]
        assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]], batches
    done = torch.tensor([rounds])
    dist.all_reduce(done)
    if dist.get_rank() == 0:
        out_path.write_text(f"{done.item()} {' '.join(sorted(methods))}\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_after_teardown()
