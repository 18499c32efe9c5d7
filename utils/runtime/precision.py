"""Numeric precision: names, the autocast context, and the fp16 gradient scaler.

fp32 runs plain; bf16 autocasts without loss scaling (its exponent range is
fp32's); fp16 autocasts and, in training, scales the loss so small gradients
do not underflow. The model keeps its ×100 logits, softmaxes and losses in
fp32 under autocast (modules/losses.py). fp16 is refused on the CPU: its
autocast there is slow and overflows (NaN features).

The command lines read PRECISIONS before torch is imported (a fast --help),
so torch is imported inside the functions here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from utils.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(name: str, device: torch.device) -> None:
    """Raise ConfigError for a precision that cannot run on `device`."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; use one of {PRECISIONS}")
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (on the CPU fp16 autocast is slow and overflows); "
                          "use bf16 or fp32 on the CPU")


def eval_precision(name: str | None, device: torch.device) -> str:
    """The evaluation's encoder precision: `name` when given, else bf16 on a GPU and fp32 on the CPU.

    Only the encoders run in bf16; the embeddings are kept, normalised and
    compared in fp32, and PMD scores come out in fp32.
    """
    if name is not None:
        return name
    return "bf16" if device.type == "cuda" else "fp32"


def autocast(name: str, device: torch.device):
    """Mixed-precision context for `name` on `device` (a no-op in fp32)."""
    if name == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16 if name == "bf16" else torch.float16)


class Precision:
    """Training precision: autocast plus, for fp16, a gradient scaler."""

    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise ConfigError(f"unknown precision {name!r}; use one of {PRECISIONS}")
        import torch

        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        return autocast(self.name, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step; with fp16 it is skipped when gradients overflowed, and the scale adapts."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def set_tf32(enabled: bool, device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions on a GPU use TF32 tensor cores (Ampere and newer); True when on.

    TF32 keeps fp32's range with a 10-bit mantissa inside the matmul (inputs
    rounded, products summed in fp32): several times the fp32 speed, results
    within about 1e-3 relative. It affects only CUDA kernels, so on the CPU
    nothing is changed. `enabled=False` restores exact fp32 matmuls on the GPU.
    """
    if device.type != "cuda":
        return False
    import torch

    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled
