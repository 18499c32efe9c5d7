"""The training library's parts against independent oracles: schedule, parameter groups,
gradient accumulation, clipping, precision, checkpoint files and logs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dataloaders.samplers import EpochSampler
from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from utils.runtime.precision import Precision
from utils.train.checkpointing import (
    atomic_save,
    epoch_checkpoints,
    load_training_state,
    prune_epoch_checkpoints,
    rng_state,
    set_rng_state,
)
from utils.train.engine import train_step
from utils.train.logs import TrainLogger, read_log
from utils.train.optim import build_optimizer
from utils.train.scheduler import lr_factor, set_lr

CPU = torch.device("cpu")


def _model(**kw) -> RICEModel:
    torch.manual_seed(0)
    return RICEModel(RICEConfig(vision=VISION_CONFIGS["tiny"], **kw))


def _batch(n: int, frames: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, frames, dtype=torch.bool)
    mask[0, 1:] = False  # one padded clip
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "frames": torch.randn(n, frames, 3, 64, 64, generator=g),
            "frame_mask": mask}


def test_lr_schedule_matches_the_formula():
    total, warmup = 20, 4
    for step in range(total):
        if step < warmup:
            expected = (step + 1) / warmup
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert lr_factor(step, total, warmup) == pytest.approx(expected)
    assert lr_factor(total, total, warmup) == pytest.approx(0.0)
    assert lr_factor(0, 10, 0) == pytest.approx(1.0)  # no warm-up
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "base_lr": 2.0, "lr": 0.0}])
    set_lr(opt, 1, total, warmup)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 2 / 4)


def test_parameter_groups_of_the_modern_recipe():
    model = _model(sim_header="cross_attention", recons_feat=True)
    opt = build_optimizer(model, lr=3e-4, coef_lr=1e-3, weight_decay=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter, exactly once
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6
        for p in group["params"]:
            name = names[id(p)]
            # Oracle: biases, LayerNorms (CLIP's ln_*, the PMD's LayerNorms) and embeddings are not decayed.
            no_decay = p.ndim == 1 or "embedding" in name
            assert (group["weight_decay"] == 0.0) == no_decay, name
            assert group["lr"] == pytest.approx(3e-7 if name.startswith("visual.") else 3e-4), name
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    assert {"visual.conv1.weight", "visual.proj", "visual.transformer.resblocks.0.attn.in_proj_weight",
            "recons_weights.conv.0.weight", "similarity_dense.weight"} <= decayed
    assert not decayed & {"visual.ln_pre.weight", "visual.positional_embedding", "visual.class_embedding",
                          "cross.embeddings.position_embeddings.weight"}


def test_optimizer_step_is_adamw():
    """Two steps against the AdamW update written out (decoupled decay, bias correction)."""
    model = _model(sim_header="cross_attention", recons_feat=True)
    opt = build_optimizer(model, lr=1e-2, coef_lr=0.1, weight_decay=0.2)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = [p for p in model.parameters()]
    start = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    expected = [p.clone() for p in start]
    gen = torch.Generator().manual_seed(3)
    for step in (1, 2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        for i, p in enumerate(params):
            g, group = p.grad, groups[id(p)]
            lr, wd = group["lr"], group["weight_decay"]
            expected[i] = expected[i] * (1 - lr * wd)
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.98 * v[i] + 0.02 * g * g
            m_hat, v_hat = m[i] / (1 - 0.9 ** step), v[i] / (1 - 0.98 ** step)
            expected[i] = expected[i] - lr * m_hat / (v_hat.sqrt() + 1e-6)
    for p, e, s0 in zip(params, expected, start):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)
        assert not torch.equal(p.detach(), s0)  # every parameter moved


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("accumulation", [2, 4])
def test_accumulation_equals_the_whole_batch(accumulation):
    """Gradient cache: micro-batches through the encoder, the gradient of the whole batch's losses."""
    batch = _batch(8, frames=3)
    model = _model(sim_header="cross_attention", recons_feat=True)  # train mode: PMD dropout on
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(7)
    losses = train_step(model, batch, opt, Precision("fp32", CPU), accumulation, clip_grad_norm=0, device=CPU)
    accumulated = _grads(model)

    # Oracle: the model called once on the whole batch, same dropout RNG.
    model.zero_grad()
    torch.manual_seed(7)
    out = model(batch["image"], batch["frames"], batch["frame_mask"])
    out["loss"].backward()
    for name in ("icl", "pmd", "pfr", "loss"):
        assert losses[name].item() == pytest.approx(out[name].item(), rel=1e-6)
    expected = _grads(model)
    assert accumulated.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(accumulated[name], expected[name], rtol=1e-4, atol=1e-6)


def test_gradient_clipping_applies_to_the_whole_model():
    batch = _batch(4)
    model = _model(sim_header="cross_attention").eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    out = train_step(model, batch, opt, Precision("fp32", CPU), accumulation=1, clip_grad_norm=0.5, device=CPU)
    after = torch.linalg.vector_norm(torch.stack([g.norm() for g in _grads(model).values()]))
    assert out["grad_norm"].item() > 0.5
    assert after.item() == pytest.approx(0.5, rel=1e-4)
    out = train_step(model, batch, opt, Precision("fp32", CPU), accumulation=1, clip_grad_norm=0, device=CPU)
    after = torch.linalg.vector_norm(torch.stack([g.norm() for g in _grads(model).values()]))
    assert after.item() == pytest.approx(out["grad_norm"].item(), rel=1e-4)


def test_bf16_autocast_runs_and_losses_stay_fp32():
    batch = _batch(4)
    model = _model(sim_header="cross_attention", recons_feat=True).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    fp32 = train_step(model, batch, opt, Precision("fp32", CPU), 1, 0, CPU)
    bf16 = train_step(model, batch, opt, Precision("bf16", CPU), 1, 0, CPU)
    for name in ("icl", "pmd", "pfr", "loss"):
        assert bf16[name].dtype == torch.float32
        assert bf16[name].item() != fp32[name].item()  # the encoder really ran in bf16
        assert bf16[name].item() == pytest.approx(fp32[name].item(), rel=0.1, abs=0.05)


def test_fp16_precision_scales_the_loss_and_round_trips_its_state():
    precision = Precision("fp16", CPU)
    assert precision.scaler is not None and Precision("bf16", CPU).scaler is None
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([weight], lr=0.0)
    precision.backward((weight * 2).sum())
    assert torch.equal(weight.grad, torch.full((3,), 2.0 * precision.scaler.get_scale()))
    precision.unscale_(opt)
    assert torch.equal(weight.grad, torch.full((3,), 2.0))
    precision.step(opt)
    state = precision.state_dict()
    other = Precision("fp16", CPU)
    other.load_state_dict(state)
    assert other.scaler.get_scale() == precision.scaler.get_scale()


def test_epoch_sampler_shards_shuffles_and_skips():
    shards = [EpochSampler(50, world_size=2, rank=r, local_batch=4, seed=7) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 24 and not set(a) & set(b)  # 6 batches of 4 each, disjoint
    # Oracle: the epoch's global order is randperm(seed + epoch); global batch k is its positions
    # [8k, 8k+8), rank 0 takes the first 4 of each, rank 1 the next 4; the last 2 samples are left out.
    order = torch.randperm(50, generator=torch.Generator().manual_seed(7 + 3)).tolist()
    assert a == [order[8 * k + i] for k in range(6) for i in range(4)]
    assert b == [order[8 * k + 4 + i] for k in range(6) for i in range(4)]
    shards[0].set_epoch(4)
    assert list(shards[0]) != a  # another epoch, another order
    shards[0].set_epoch(3, start_sample=16)  # two global batches done
    assert list(shards[0]) == a[8:] and len(shards[0]) == 16


def test_epoch_sampler_resumes_by_sample_with_another_batch_size():
    """16 samples of the epoch seen at batch 8; the rest at global batch 6 on 3 processes: nothing twice."""
    seen_before = list(EpochSampler(50, world_size=1, rank=0, local_batch=8, seed=1))[:16]
    after = []
    for rank in range(3):
        shard = EpochSampler(50, world_size=3, rank=rank, local_batch=2, seed=1)
        shard.set_epoch(0, start_sample=16)
        after.append(list(shard))
    rest = [i for batch in zip(*(zip(*[iter(a)] * 2) for a in after)) for pair in batch for i in pair]
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1)).tolist()
    assert seen_before + rest == order[:16 + 5 * 6]  # 34 samples left: 5 global batches of 6, 4 left out
    assert len(set(seen_before + rest)) == len(seen_before + rest)


def test_atomic_save_and_training_state_checks(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    atomic_save({"format": "rice-repro", "model": {}, "step": 1}, path)
    atomic_save({"format": "rice-repro", "model": {}, "step": 2}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
    with pytest.raises(ValueError, match="not a training checkpoint .* use --init_model"):
        load_training_state(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read this training checkpoint"):
        load_training_state(tmp_path / "junk.pt")


def test_prune_keeps_the_newest_epochs(tmp_path):
    for e in (1, 2, 3, 10):
        (tmp_path / f"epoch_{e}.pt").write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"x")
    assert [p.name for p in prune_epoch_checkpoints(tmp_path, keep=2)] == ["epoch_1.pt", "epoch_2.pt"]
    assert [p.name for p in epoch_checkpoints(tmp_path)] == ["epoch_3.pt", "epoch_10.pt"]
    assert prune_epoch_checkpoints(tmp_path, keep=0) == [] and (tmp_path / "last.pt").exists()


def test_rng_state_round_trip_through_a_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(5)
    state = rng_state()
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_log_reader_and_resume_truncation(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
    logger = TrainLogger(tmp_path, enabled=True, tensorboard=False, resume_step=3)
    logger.log({"step": 4, "loss": 0.5})
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4]
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON record"):
        read_log(log)
    log.write_text('{"step": 1}\n{"step": 2, "lo')  # killed mid-write: the last line is dropped
    with pytest.warns(UserWarning, match="unfinished last line"):
        assert [r["step"] for r in read_log(log)] == [1]


def test_cuda_rng_is_saved_and_restored_for_the_process_s_own_device_only(monkeypatch):
    """A rank saves its own GPU's generator, not every visible one, so resuming with fewer visible
    GPUs per process (8 -> 4 x 2, srun's one GPU per task) works. Simulated: no GPU is needed."""
    from utils.train import checkpointing

    restored = []
    fake = {
        "is_available": lambda: True, "is_initialized": lambda: True, "current_device": lambda: 5,
        "get_rng_state": lambda device: torch.full((4,), device, dtype=torch.uint8),
        "set_rng_state": lambda state, device: restored.append((int(state[0]), device)),
    }
    for name, value in fake.items():
        monkeypatch.setattr(checkpointing.torch.cuda, name, value)
    state = checkpointing.rng_state()
    assert "cuda" not in state and int(state["cuda_device"][0]) == 5  # device 5's state only
    monkeypatch.setattr(checkpointing.torch.cuda, "current_device", lambda: 0)  # resumed on 1 visible GPU
    checkpointing.set_rng_state(state)
    assert restored == [(5, 0)]
    legacy = {k: v for k, v in state.items() if k != "cuda_device"}
    checkpointing.set_rng_state({**legacy, "cuda": [torch.full((4,), d, dtype=torch.uint8) for d in range(8)]})
    assert restored[-1] == (0, 0)  # an old file (every device): this process's entry
    monkeypatch.setattr(checkpointing.torch.cuda, "current_device", lambda: 3)
    checkpointing.set_rng_state({**legacy, "cuda": [torch.zeros(4, dtype=torch.uint8)] * 2})  # no IndexError
    assert len(restored) == 2
