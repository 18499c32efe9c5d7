"""Recipe v1_release: the v1 release's numerics, each checked against the rule written out here.

BertAdam (fp16 state, no bias correction, its weight decay, per-parameter
clipping), the warm-up/cosine on the global progress, the decay rule, the fp16
encoder weights, the heads' initialisation, and (with 2 torchrun processes)
1/world_size of the encoder gradient.
"""

import math
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from tests.recipe_grad_worker import run_two_processes
from utils.train.bert_adam import BertAdam
from utils.train.params import parse_args
from utils.train.recipes import build_optimizer, init_heads, prepare_model
from utils.train.scheduler import set_lr, v1_lr_factor

ROOT = Path(__file__).resolve().parents[1]


def _model(pfr=True, seed=0):
    torch.manual_seed(seed)
    return RICEModel(RICEConfig(vision=VISION_CONFIGS["tiny"], sim_header="cross_attention", recons_feat=pfr))


def test_bert_adam_update_written_out():
    """Three steps on an fp16 and an fp32 tensor against BertAdam's update, op by op in the tensor's dtype."""
    g = torch.Generator().manual_seed(0)
    w16 = torch.nn.Parameter(torch.randn(4, 5, generator=g).half())
    w32 = torch.nn.Parameter(torch.randn(7, generator=g))
    b1, b2, eps, wd = 0.9, 0.98, 1e-6, 0.2
    opt = BertAdam([{"params": [w16], "weight_decay": wd}, {"params": [w32], "weight_decay": 0.0}],
                   lr=0.5, betas=(b1, b2), eps=eps, max_grad_norm=1.0)
    ref = {"w16": w16.detach().clone(), "w32": w32.detach().clone()}
    moments = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in ref.items()}
    for step, lr in enumerate([0.0, 0.01, 0.02]):
        grads = {"w16": torch.randn(4, 5, generator=g).half() * (3.0 if step == 1 else 0.1),
                 "w32": torch.randn(7, generator=g) * 0.2}
        w16.grad, w32.grad = grads["w16"].clone(), grads["w32"].clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        for key, decay in (("w16", wd), ("w32", 0.0)):
            p, grad = ref[key], grads[key]
            norm = grad.float().norm()
            if norm > 1.0:  # each parameter clipped to norm 1 on its own
                grad = grad * (1.0 / (norm + 1e-6)).to(grad.dtype)
            m, v = moments[key]
            m = m * b1 + (1 - b1) * grad
            v = v * b2 + (1 - b2) * grad * grad
            update = m / (v.sqrt() + eps) + decay * p  # no bias correction
            p = p - lr * update
            ref[key], moments[key] = p, (m, v)
        torch.testing.assert_close(w16.detach(), ref["w16"], rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(w32.detach(), ref["w32"], rtol=1e-6, atol=1e-7)
    state = opt.state[w16]
    assert state["exp_avg"].dtype == torch.float16 and state["exp_avg_sq"].dtype == torch.float16
    assert w16.dtype == torch.float16 and state["step"] == 3
    # the first update after the lr-0 step: m/(sqrt(v)+eps) is 0.1/sqrt(0.02) = 0.707 of sign(g) for a
    # fresh state (bias-corrected Adam would give 1.0); checked on a fresh optimizer
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([0.5, -0.5, 0.25])
    BertAdam([p], lr=1.0, betas=(b1, b2), eps=0.0, weight_decay=0.0).step()
    torch.testing.assert_close(p.detach(), 1.0 - 0.1 / math.sqrt(0.02) * torch.tensor([1.0, -1.0, 1.0]))


def test_v1_schedule_on_global_progress():
    n = 200
    assert v1_lr_factor(0, n, 0.1) == 0.0  # the first step learns nothing
    assert v1_lr_factor(10, n, 0.1) == pytest.approx(0.5)
    assert v1_lr_factor(19, n, 0.1) == pytest.approx(0.95)
    # after the warm-up the cosine runs on x = step / n, not on the part after the warm-up
    for step in (20, 100, 150, 199):
        assert v1_lr_factor(step, n, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * step / n)))
    assert v1_lr_factor(20, n, 0.1) == pytest.approx(0.97553, abs=1e-5)
    p = torch.nn.Parameter(torch.ones(1))
    opt = BertAdam([{"params": [p], "base_lr": 3e-4}], lr=3e-4)
    set_lr(opt, 100, n, warmup_steps=999, v1_warmup_proportion=0.1)  # warmup_steps is not read
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.5)


def test_v1_decay_rule_and_groups():
    model = _model()
    args = Namespace(recipe="v1_release", lr=3e-4, coef_lr=1e-3, weight_decay=0.2)
    opt = build_optimizer(model, args)
    assert isinstance(opt, BertAdam)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in opt.param_groups:
        encoder, decay = group["name"].startswith("encoder"), group["name"].endswith("_decay") and \
            "no_decay" not in group["name"]
        assert group["lr"] == pytest.approx(3e-7 if encoder else 3e-4)
        assert group["weight_decay"] == (0.2 if decay else 0.0)
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert name.startswith("visual.") == encoder, name
            assert ("bias" not in name) == decay, name
    assert seen == set(names.values())
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    # LayerNorm weights and embeddings are decayed by the v1 rule
    assert {"visual.ln_pre.weight", "visual.class_embedding", "visual.positional_embedding",
            "cross.embeddings.position_embeddings.weight", "cross.pooler.ln_pool.weight"} <= decayed


def test_fp16_encoder_follows_convert_weights():
    model = _model()
    reference = _model()  # the same weights in fp32
    prepare_model(model, "v1_release", world_size=1)
    keys = set(reference.state_dict())
    assert set(model.state_dict()) == keys  # checkpoints keep their names
    for name, p in model.named_parameters():
        leaf = name.split(".")[-1]
        if not name.startswith("visual."):
            want = torch.float32  # the heads stay fp32
        elif ".ln_" in name or leaf in ("class_embedding", "positional_embedding"):
            want = torch.float32
        else:  # conv1, in_proj_*, out_proj, c_fc, c_proj, proj
            want = torch.float16
        assert p.dtype == want, (name, p.dtype)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    emb, tokens = model.visual(images, return_tokens=True)
    ref_emb, ref_tokens = reference.visual(images, return_tokens=True)
    assert emb.dtype == tokens.dtype == torch.float32
    torch.testing.assert_close(emb, ref_emb, rtol=0, atol=5e-2)
    assert not torch.equal(emb, ref_emb)  # it really ran in fp16


def test_v1_init_of_the_heads():
    model = _model(seed=3)
    init_heads(model, "v1_release")
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith("visual")]
    weights = torch.cat([m.weight.reshape(-1) for m in linear])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002
    assert all(torch.count_nonzero(m.bias) == 0 for m in linear if m.bias is not None)
    assert model.cross.embeddings.position_embeddings.weight.std().item() == pytest.approx(0.02, abs=0.002)
    convs = model.recons_weights.conv
    # PyTorch's default: uniform(±1/sqrt(fan_in)) weights and biases, negative values included
    for conv in (convs[0], convs[2]):
        bound = 1 / math.sqrt(conv.in_channels)
        assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
        assert conv.bias.abs().sum() > 0
    assert (convs[2].weight < 0).any() or (convs[0].weight < 0).any()
    # the modern recipe keeps the modules' own initialisation
    untouched = _model(seed=3)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    init_heads(untouched, "modern")
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_recipe_flag_presets_and_errors(tmp_path, expect_error):
    import lpr4m_train

    args = parse_args(["--dataset", "synthetic", "--recipe", "v1_release", "--lr", "1e-3"])
    assert (args.recipe, args.lr, args.coef_lr, args.precision) == ("v1_release", 1e-3, 1e-3, "fp32")
    assert parse_args(["--dataset", "synthetic"]).recipe == "modern"
    config = tmp_path / "c.yaml"
    config.write_text("recipe: v1_release\nweight_decay: 0.1\n")
    args = parse_args(["--dataset", "synthetic", "--config", str(config)])
    assert (args.recipe, args.weight_decay, args.clip_grad_norm) == ("v1_release", 0.1, 1.0)
    with expect_error("--recipe v1_release .* --precision fp32"):
        lpr4m_train.main(["--dataset", "synthetic", "--recipe", "v1_release", "--precision", "bf16"])
    with expect_error("invalid choice"):
        lpr4m_train.main(["--dataset", "synthetic", "--recipe", "v3"])
    with expect_error("--recipe v2_release .* --init_model is not supported"):
        lpr4m_train.main(["--dataset", "synthetic", "--recipe", "v2_release", "--init_model", "x.pt"])
    v2 = parse_args(["--dataset", "synthetic", "--recipe", "v2_release", "--precision", "fp32"])
    assert (v2.lr, v2.coef_lr, v2.clip_grad_norm, v2.max_steps, v2.transform_style, v2.precision) == \
        (1e-4, 1e-2, 0.0, 5000, "v2", "fp32")


def test_encoder_gradient_is_one_over_world_size_with_two_processes(tmp_path):
    """2 torchrun processes (gloo): encoder gradients are half the 1-process ones, head gradients equal."""
    model = _model(pfr=True)
    config = model.config
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    frames = torch.randint(0, 256, (4, 2, 3, 64, 64), generator=g, dtype=torch.uint8)
    mask = torch.ones(4, 2, dtype=torch.bool)
    mask[3, 1] = False
    two = run_two_processes(tmp_path, {"config": config.to_dict(), "state": model.state_dict(), "images": images,
                                       "frames": frames, "frame_mask": mask}, "v1_release")

    prepare_model(model, "v1_release", world_size=1)  # the single-process reference, same fp16 encoder
    model.eval()
    model(images, frames, mask)["loss"].backward()
    for name, p in model.named_parameters():
        scale = 0.5 if name.startswith("visual.") else 1.0
        want = p.grad.float() * scale
        got = two[name].float()
        assert two[name].dtype == p.grad.dtype, name
        # summation-order noise only (fp16 in the encoder); the PMD key bias and score bias have a true
        # gradient of 0 (the softmaxes do not see a shift), so theirs is noise alone
        err = (got - want).norm()
        assert err <= 0.02 * want.norm() + 1e-5, (name, err.item(), want.norm().item())
    encoder = torch.cat([two[n].float().reshape(-1) for n, _ in model.named_parameters() if n.startswith("visual.")])
    full = torch.cat([p.grad.float().reshape(-1) for n, p in model.named_parameters() if n.startswith("visual.")])
    assert (encoder.norm() / full.norm()).item() == pytest.approx(0.5, abs=0.01)


@torch.no_grad()
def test_v1_losses_on_a_fixed_batch_with_the_fp16_encoder():
    """ICL from the fp16 encoder's (fp32) embeddings by the formula; the total is ICL + PMD + 0.05·PFR."""
    import torch.nn.functional as F

    model = _model()
    prepare_model(model, "v1_release", world_size=1)
    model.eval()
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (5, 3, 64, 64), generator=g, dtype=torch.uint8)
    frames = torch.randint(0, 256, (5, 2, 3, 64, 64), generator=g, dtype=torch.uint8)
    mask = torch.ones(5, 2, dtype=torch.bool)
    mask[2, 1] = False
    features = model.encode_pairs(images, frames, mask)
    losses = model.pair_losses(features)
    # the embeddings, recomputed: fp16 encoder outputs cast to fp32; v1 pooling (normalise, mean, normalise)
    emb, _ = model.visual(images)
    img = emb / emb.norm(dim=-1, keepdim=True)
    per_frame, _ = model.visual(frames[mask])
    per_frame = per_frame / per_frame.norm(dim=-1, keepdim=True)
    vid = torch.stack([per_frame[mask[:i].sum():mask[:i + 1].sum()].mean(0) for i in range(5)])
    vid = vid / vid.norm(dim=-1, keepdim=True)
    assert img.dtype == vid.dtype == torch.float32
    target = torch.arange(5)
    icl = 0.5 * (F.cross_entropy(100 * img @ vid.T, target) + F.cross_entropy(100 * vid @ img.T, target))
    torch.testing.assert_close(losses["icl"], icl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["loss"], losses["icl"] + losses["pmd"] + 0.05 * losses["pfr"])
