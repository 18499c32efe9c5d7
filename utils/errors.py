"""The project's error types: one base class, one subclass per kind of mistake.

Every message says what is wrong, where, and how to fix it. The entry scripts
turn any `RiceError` into one line on stderr (`error: ...`) and exit code 2
(`one_line_errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys


class RiceError(Exception):
    """Base of every error a user can cause (bad flags, data, checkpoints, run set-up)."""


class ConfigError(RiceError, ValueError):
    """Flags or settings that contradict each other, the checkpoint or the machine."""


class DataError(RiceError, ValueError):
    """Bad or missing input data."""


class CheckpointError(RiceError, ValueError):
    """A checkpoint file that cannot be read as any supported format, or does not fit."""


class TrainingError(RiceError, RuntimeError):
    """A training run that cannot start or continue as configured."""


EXIT_CODE = 2  # the same code argparse uses for usage errors


@contextlib.contextmanager
def one_line_errors():
    """Turn a RiceError raised inside into `error: <message>` on stderr and exit code 2."""
    try:
        yield
    except RiceError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE) from None
