"""Gradient communication across 2 real processes (torchrun, gloo, CPU) against one-process oracles.

One torchrun launch of tests/gpu_dist_worker.py; every figure below is
recomputed here from the same seeds, without any process group.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.processes import torchrun_two

ROOT = Path(__file__).resolve().parents[1]


def seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def bf16_mean(parts: list[torch.Tensor]) -> torch.Tensor:
    """DDP's bf16 compression: each part rounded to bf16 and halved in bf16, summed in bf16, back to fp32."""
    total = torch.zeros_like(parts[0], dtype=torch.bfloat16)
    for part in parts:
        total = total + part.to(torch.bfloat16) / len(parts)
    return total.float()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gpu_dist")
    torchrun_two(ROOT / "tests" / "gpu_dist_worker.py", out)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_process_group_has_the_requested_timeout(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["timeout_s"] for r in ranks] == [120.0, 120.0]  # init_distributed(timeout_min=2)


def test_gather_backward_is_a_reduce_scatter_with_the_former_numbers(ranks):
    weights = [seeded(100 + r, 6, 4) for r in range(2)]
    for rank, result in enumerate(ranks):
        # The gradient of x on `rank` is the sum over processes of the weights of its rows.
        oracle = sum(w[rank * 3:(rank + 1) * 3] for w in weights)
        assert torch.equal(result["gather_grad"], result["gather_before"])  # bit-identical to all-reduce + slice
        torch.testing.assert_close(result["gather_grad"], oracle, rtol=0, atol=1e-6)


def test_flat_gradient_average_exact_and_bf16(ranks):
    local = [[seeded(200 + r, 7, 5) * 1e-3, seeded(300 + r, 11)] for r in range(2)]
    for result in ranks:
        for i in range(2):
            exact = (local[0][i] + local[1][i]) / 2
            assert torch.equal(result["average_exact"][i], exact)
            compressed = result["average_bf16"][i]
            assert torch.equal(compressed, bf16_mean([local[0][i], local[1][i]]))
            assert not torch.equal(compressed, exact)  # the rounding is really there
            # bf16 keeps 8 significant bits: each part and the sum are off by at most 2^-8 of their size.
            bound = 2**-7 * (local[0][i].abs() + local[1][i].abs()) / 2
            assert bool(((compressed - exact).abs() <= bound).all())


def test_ddp_bf16_compression_hook_gives_bf16_rounded_averages(ranks):
    grads = []
    for rank in range(2):
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        model(seeded(400 + rank, 4, 5)).square().sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for result in ranks:
        for name in ("weight", "bias"):
            assert torch.equal(result["ddp"][name], bf16_mean([g[name] for g in grads])), name


def test_counts_are_summed_over_processes(ranks):
    assert [r["counts"] for r in ranks] == [[3, 1], [3, 1]]  # only rank 1 had any


def test_skipped_files_are_summed_over_processes(small_data, tmp_path):
    """Only rank 1 reads the one unreadable image: the log and the summary still count it (not rank 0's 0)."""
    import shutil
    from collections import Counter

    from dataloaders.registry import DATASETS
    from dataloaders.samplers import EpochSampler
    from utils.train.logs import read_log
    from utils.train.params import parse_args

    root = tmp_path / "lpr4m"
    shutil.copytree(small_data / "lpr4m", root)
    argv = ["--dataset", "lpr4m", "--data_root", str(root), "--model_config", "tiny", "--max_frames", "2",
            "--batch_size", "8", "--max_steps", "2", "--num_workers", "0", "--log_every_steps", "1",
            "--no_progress", "--no_tensorboard", "--device", "cpu", "--output_dir", str(tmp_path / "run")]
    pairs = DATASETS["lpr4m"].load_train(root, parse_args(argv))
    shares = [list(EpochSampler(len(pairs), 2, rank, 4, seed=42)) for rank in range(2)]  # steps 1, 2
    read_by = [Counter(pairs[i].image_path for i in share[:8]) for share in shares]
    bad = next(path for path in read_by[1] if path not in read_by[0])
    Path(bad).write_bytes(b"not a JPEG")

    def skips(index: int) -> int:  # the documented rule: an unreadable sample is replaced by the next one
        count = 0
        while pairs[index % len(pairs)].image_path == bad:
            count, index = count + 1, index + 1
        return count

    per_step = [shares[1][step * 4:(step + 1) * 4] for step in range(2)]
    expected = [sum(skips(i) for i in step) for step in per_step]
    replaced = [sum(skips(i) > 0 for i in step) for step in per_step]
    assert sum(expected) >= 1 and all(skips(i) == 0 for i in shares[0][:8])
    proc = torchrun_two(ROOT / "lpr4m_train.py", *argv, timeout=300, cwd=tmp_path)
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["skipped_files"] for r in records] == expected
    assert [r["replaced_samples"] for r in records] == replaced
    assert f"train (all processes): {sum(expected)} unreadable files skipped" in proc.stderr
