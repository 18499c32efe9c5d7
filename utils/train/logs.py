"""Training logs: a JSON-lines file of every logged step, and TensorBoard events.

Each line of `log.jsonl` is one record: training records carry `step`,
`epoch`, the losses by name (`loss`, `icl`, `pmd`, `pfr`), the learning rates
(`lr_encoder`, `lr_heads`), `samples_per_s`, the memory of the window since
the previous record (`mem_mb`, `rss_mb`, on a GPU `mem_reserved_mb`) and
`skipped_files` / `replaced_samples` summed over processes; validation records
carry `step`, `epoch` and `val` (R1/R5/R10 in percent). Only the main process
writes. On resume, records past the resumed step (written after the last
checkpoint of the interrupted run) are dropped, so the file never holds a step
twice.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    """The records of a JSONL log, in file order.

    Blank lines are skipped. A line that is not a JSON object is an error naming
    the file and line number, except an unfinished last line (no newline after
    it: the run is still writing it, or was killed mid-write), which is skipped
    with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log file (a training run writes OUTPUT_DIR/log.jsonl)")
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the last piece has no newline after it: a write cut short
                warnings.warn(f"{path}:{number}: skipping an unfinished last line ({err.msg})", stacklevel=2)
                continue
            raise ValueError(f"{path}:{number}: not a JSON record ({err.msg} at column {err.colno}): "
                             f"{line[:80]!r}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}: {line[:80]!r}")
        records.append(record)
    return records


class TrainLogger:
    """Writes log.jsonl (and TensorBoard scalars when enabled) on the main process."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.path = output_dir / "log.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            self.path.write_text("")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used: it is slow

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key in ("step", "epoch"):
                    continue
                if isinstance(value, dict):
                    for name, v in value.items():
                        self.writer.add_scalar(f"{key}/{name}", v, step)
                else:
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
