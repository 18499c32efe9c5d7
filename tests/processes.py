"""Processes in tests: two-process torchrun launches, and what /proc says of a process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun_two(script: Path, *args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `script ARGS` under torchrun with 2 gloo processes on this machine (the repository importable,
    one thread each, no launcher variables inherited); fail the test with its output unless it succeeds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *map(str, args)]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (None if the process has gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    """The parent of a process (None if it has gone)."""
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def state(pid: int) -> str | None:
    """A process's state letter ("R", "S", "Z", ...; None if it has gone)."""
    fields = _stat(pid)
    return fields[0] if fields else None


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: its children, theirs, and so on (parents before children)."""
    parents = {int(p.name): parent_pid(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    found = [pid]
    for parent in found:
        found += [child for child, of in parents.items() if of == parent]
    return found[1:]
