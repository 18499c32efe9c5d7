"""Checks that need a CUDA GPU (marked `cuda`, skipped without one; benchmarks/gpu_check.sh runs them).

fp16 with the gradient scaler, bf16, NCCL with one process (the gather's
reduce-scatter, the bf16 compression hook), memory accounting, TF32, the
compiled encoder, training and evaluation on the GPU.
"""

import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

import lpr4m_embedding_eval
import lpr4m_train
from modules.clip_vit import VisionTransformer
from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from utils.runtime.precision import Precision, set_tf32
from utils.train.build import memory_window
from utils.train.engine import train_step
from utils.train.logs import read_log
from utils.train.optim import build_optimizer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICE = torch.device("cuda", 0)


def _steps(precision_name: str, steps: int = 3) -> tuple[list[float], bool, Precision]:
    """A few training steps of a tiny ICL+PMD+PFR model on the GPU; (losses, weights moved, precision)."""
    torch.manual_seed(0)
    config = RICEConfig(vision=VISION_CONFIGS["tiny"], sim_header="cross_attention", recons_feat=True)
    model = RICEModel(config).to(DEVICE).train()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, 1e-3, 1.0, 0.2)
    precision = Precision(precision_name, DEVICE)
    g = torch.Generator().manual_seed(1)
    size = config.vision.image_size
    batch = {"image": torch.randint(0, 256, (8, 3, size, size), generator=g, dtype=torch.uint8),
             "frames": torch.randint(0, 256, (8, 3, 3, size, size), generator=g, dtype=torch.uint8),
             "frame_mask": torch.ones(8, 3, dtype=torch.bool)}
    losses = []
    for _ in range(steps):
        out = train_step(model, batch, optimizer, precision, accumulation=1, clip_grad_norm=1.0, device=DEVICE)
        losses.append(float(out["loss"]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    moved = all(not torch.equal(p, start[name]) for name, p in model.named_parameters() if name.startswith("visual"))
    return losses, moved, precision


def test_fp16_with_grad_scaler_and_bf16_follow_fp32():
    fp32, _, _ = _steps("fp32")
    fp16, fp16_moved, precision = _steps("fp16")
    bf16, bf16_moved, _ = _steps("bf16")
    assert precision.scaler is not None and precision.scaler.get_scale() > 0
    assert all(np.isfinite(fp16 + bf16)) and fp16_moved and bf16_moved  # the scaled steps were taken
    # Same data, same start: the first loss differs by rounding only (PMD dropout draws differ later).
    assert fp16[0] != fp32[0] and bf16[0] != fp32[0]  # the encoders really ran in half precision
    assert fp16[0] == pytest.approx(fp32[0], rel=0.1, abs=0.05)
    assert bf16[0] == pytest.approx(fp32[0], rel=0.1, abs=0.05)


@pytest.fixture
def nccl_group():
    """A one-process NCCL group bound to the GPU (what a one-GPU torchrun job sets up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, device_id=DEVICE)
    yield
    dist.destroy_process_group()


def test_nccl_one_process_gather_and_bf16_compression(nccl_group):
    from torch import nn
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    from utils.runtime.distributed import _AllGatherWithGrad

    x = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    weights = torch.randn(4, 3, device=DEVICE)
    gathered = _AllGatherWithGrad.apply(x)  # the autograd function itself (the helper skips it at world size 1)
    (gathered * weights).sum().backward()
    assert torch.equal(gathered, x) and torch.equal(x.grad, weights)  # reduce-scatter over one process

    torch.manual_seed(0)
    model = nn.Linear(5, 3).to(DEVICE)
    reference = nn.Linear(5, 3).to(DEVICE)
    reference.load_state_dict(model.state_dict())
    ddp = DistributedDataParallel(model, device_ids=[0], gradient_as_bucket_view=True)
    ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    inputs = torch.randn(4, 5, device=DEVICE)
    ddp(inputs).square().sum().backward()
    reference(inputs).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad.to(torch.bfloat16).float())  # rounded to bf16 on the wire


def test_memory_windows_report_allocated_and_reserved_peaks():
    memory_window(DEVICE)
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE)
    del block
    first, second = memory_window(DEVICE), memory_window(DEVICE)
    assert first["mem_mb"] >= 256 and first["mem_reserved_mb"] >= first["mem_mb"]
    # The next window's allocated peak starts from what is alive now; the allocator still holds the block.
    assert second["mem_mb"] < first["mem_mb"] - 200 and second["mem_reserved_mb"] >= 256


def test_tf32_changes_fp32_matmuls_on_ampere_and_newer():
    if torch.cuda.get_device_capability(DEVICE) < (8, 0):
        pytest.skip("TF32 needs compute capability 8.0 or newer")
    a, b = (torch.randn(1024, 1024, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(i))
            for i in range(2))
    exact = (a.double() @ b.double()).float()
    try:
        set_tf32(False, DEVICE)
        fp32_error = (a @ b - exact).abs().max().item()
        set_tf32(True, DEVICE)
        tf32_error = (a @ b - exact).abs().max().item()
    finally:
        set_tf32(False, DEVICE)
    assert tf32_error > 10 * fp32_error and tf32_error < 1.0


def test_compiled_encoder_matches_eager():
    torch.manual_seed(0)
    eager = VisionTransformer(VISION_CONFIGS["tiny"]).to(DEVICE)
    compiled = VisionTransformer(VISION_CONFIGS["tiny"]).to(DEVICE)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(fullgraph=True)
    size = VISION_CONFIGS["tiny"].image_size
    images = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8, device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for model in (eager, compiled):
            model(images)[0].float().square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        # bf16 rounding happens in other places once kernels are fused: compare whole gradients.
        assert (b.grad - a.grad).norm() <= 0.05 * a.grad.norm(), name


def test_training_and_evaluation_on_the_gpu(small_data, tmp_path):
    common = ["--dataset", "lpr4m", "--data_root", str(small_data / "lpr4m"), "--model_config", "tiny",
              "--sim_header", "cross_attention", "--recons_feat", "--max_frames", "2", "--batch_size", "8",
              "--max_steps", "4", "--num_workers", "0", "--log_every_steps", "2", "--no_progress",
              "--no_tensorboard", "--device", "cuda"]
    result = lpr4m_train.main([*common, "--precision", "bf16", "--compile", "--output_dir", str(tmp_path / "run")])
    assert next(result["model"].parameters()).device.type == "cuda" and result["step"] == 4
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert all(r["mem_reserved_mb"] >= r["mem_mb"] > 0 for r in records)
    evals = {}
    for name, flags in (("default", []), ("fp32", ["--precision", "fp32"])):
        out = tmp_path / f"eval_{name}"
        lpr4m_embedding_eval.main(["--data_root", str(small_data / "lpr4m"), "--ckpt_path", result["model_path"],
                                   "--num_workers", "0", "--no_progress", "--save_features", "--output_dir",
                                   str(out), *flags])
        evals[name] = (json.loads((out / "metrics.json").read_text()), np.load(out / "features.npz"))
    assert evals["default"][0]["flags"]["precision"] == "bf16"  # the GPU default
    bf16, fp32 = (evals[n][1]["query_features"] for n in ("default", "fp32"))
    assert (bf16 * fp32).sum(axis=1).min() > 0.98  # the same features up to bf16 rounding
