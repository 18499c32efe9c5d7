"""What this process may use of its machine (no torch import: the command lines read it while parsing)."""

from __future__ import annotations

import os


def default_num_workers(cap: int = 8) -> int:
    """Data-loading workers per process: the CPUs this process may use, shared among the processes of
    its machine (LOCAL_WORLD_SIZE, set by torchrun), less one for the process itself; at most `cap`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(cap, per_process - 1))
