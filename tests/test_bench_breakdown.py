"""benchmarks/bench_breakdown.py: the encoder step's matrix products, checked against a FLOP count by hand."""

from __future__ import annotations

import pytest

from modules.config import VISION_CONFIGS


def expected_matmul_gflop(name: str, batch: int) -> float:
    """FLOPs of every matrix product in one training step of the encoder, counted from its shapes.

    Forward: per token and block the four linear layers (in-projection W x 3W, out-projection W x W,
    MLP W x 4W and 4W x W), the patch embedding and the CLS projection. Backward: each product twice
    (input and weight gradient), except the patch embedding's input gradient (pixels need none).
    The attention products run inside the fused attention kernel, not as matrix-product ops.
    """
    c = VISION_CONFIGS[name]
    tokens = c.grid_size**2 + 1
    blocks = batch * tokens * 12 * c.width**2 * c.layers
    patches = batch * c.grid_size**2 * 3 * c.patch_size**2 * c.width
    proj = batch * c.width * c.embed_dim
    forward = blocks + patches + proj
    return 2 * (3 * forward - patches) / 1e9


def test_breakdown_counts_the_products_of_the_step():
    import benchmarks.bench_breakdown as bench

    results = bench.main(["--model", "tiny", "--batch", "3", "--steps", "2", "--precisions", "fp32"])
    r = results["fp32"]
    assert r["matmul_gflop"] == pytest.approx(expected_matmul_gflop("tiny", 3), rel=1e-6)
    assert 0 < r["matmul_share"] <= 1 and r["ceiling"] == pytest.approx(1 / r["matmul_share"])
    assert 0 < r["matmul_s"] <= r["step_s"] and r["matmul_tflops"] > 0 and r["peak_tflops"] > 0


def test_half_precision_on_cpu_is_refused_where_it_needs_a_gpu(capsys):
    import benchmarks.bench_breakdown as bench

    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--model", "tiny", "--precisions", "fp16"])
    assert exit_info.value.code == 2 and "need --device cuda" in capsys.readouterr().err
