"""The CLIP encoder against open_clip, an independent implementation, plus its options."""

from __future__ import annotations

import open_clip  # test-only dependency (requirements-dev.txt)
import pytest
import torch

from modules.clip_vit import QuickGELU, VisionConfig, VisionTransformer
from modules.config import VISION_CONFIGS
from tests.clip_state_dicts import openai_state_dict


def build_pair(config: VisionConfig, seed: int = 0):
    """The same random OpenAI state dict loaded into open_clip's model and into ours."""
    state = openai_state_dict(config, seed=seed)
    reference = open_clip.model.build_model_from_openai_state_dict(dict(state), cast_dtype=torch.float32)
    reference = reference.float().eval()  # it stores matrices in fp16; our values are fp16-exact
    with torch.device("meta"):  # no random init to pay for: every tensor comes from `state`
        ours = VisionTransformer(config).eval()
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    ours.load_state_dict(visual, strict=True, assign=True)
    return reference, ours

@pytest.mark.parametrize(
    "config, batch",
    [
        (VISION_CONFIGS["tiny"], 3),
        (VisionConfig(image_size=48, patch_size=8, width=64, layers=3, heads=1, embed_dim=32), 2),
        (VISION_CONFIGS["ViT-B/32"], 2),
    ],
    ids=["tiny", "odd-shape", "ViT-B/32"],
)
def test_matches_open_clip(config, batch):
    reference, ours = build_pair(config)
    images = torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(1))
    reference.visual.output_tokens = True
    with torch.no_grad():
        ref_emb, ref_patch_tokens = reference.visual(images)  # tokens: ln_post output without CLS
        emb, tokens = ours(images, return_tokens=True)
        emb_only, no_tokens = ours(images)
    assert ref_emb.abs().mean() > 0.1  # a meaningful scale for the tolerance below
    torch.testing.assert_close(emb, ref_emb, atol=1e-5, rtol=0)
    torch.testing.assert_close(emb_only, ref_emb, atol=1e-5, rtol=0)
    assert tokens.shape == (batch, config.num_tokens, config.embed_dim) and no_tokens is None
    torch.testing.assert_close(tokens[:, 0], emb)
    torch.testing.assert_close(tokens[:, 1:], ref_patch_tokens @ reference.visual.proj, atol=1e-5, rtol=0)

@pytest.mark.parametrize("requires_grad", [False, True], ids=["inference-path", "autograd-path"])
def test_quick_gelu_formula(requires_grad):
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=requires_grad)
    expected = x.detach() / (1 + torch.exp(-1.702 * x.detach()))
    y = QuickGELU()(x)
    torch.testing.assert_close(y.detach(), expected)
    if requires_grad:  # d/dx x·σ(ax) = σ(ax) + a·x·σ(ax)(1 − σ(ax))
        y.sum().backward()
        s = torch.sigmoid(1.702 * x.detach())
        torch.testing.assert_close(x.grad, s + 1.702 * x.detach() * s * (1 - s))

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quick_gelu_paths_agree_bit_for_bit(dtype):
    """Without gradients QuickGELU skips the autograd function; both paths give the same bits."""
    x = (torch.randn(40, 96, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
    inference = QuickGELU()(x)
    with torch.no_grad():
        no_grad = QuickGELU()(x.clone().requires_grad_())
    training = QuickGELU()(x.clone().requires_grad_())
    assert training.grad_fn is not None and inference.grad_fn is None and no_grad.grad_fn is None
    assert torch.equal(inference, training.detach()) and torch.equal(no_grad, inference)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = VisionTransformer(VISION_CONFIGS["tiny"])
    images = torch.randn(2, 3, 64, 64)

    def gradients(enable: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        emb, tokens = model(images, return_tokens=True)
        (emb.square().sum() + tokens.sin().sum()).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert model.transformer.grad_checkpointing
    assert plain.keys() == checkpointed.keys() and all(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)

def test_bf16_autocast_on_cpu_forward_and_backward():
    torch.manual_seed(0)
    model = VisionTransformer(VISION_CONFIGS["tiny"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference, _ = model(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, tokens = model(images, return_tokens=True)
    assert emb.dtype == torch.bfloat16 and tokens.dtype == torch.bfloat16
    assert torch.isfinite(emb.float()).all()
    # bf16 keeps ~3 significant digits: the result must be close to fp32, not equal
    assert (emb.float() - reference).norm() / reference.norm() < 0.05
    emb.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())

def _attention_fp64(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v in fp64 from [B, N, 3·W] projections: the oracle for the attention core."""
    b, n, w3 = qkv.shape
    q, k, v = qkv.double().view(b, n, 3, heads, w3 // 3 // heads).permute(2, 0, 3, 1, 4)
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return (probs @ v).transpose(1, 2).reshape(b, n, w3 // 3)


def test_bf16_training_attention_core_runs_in_fp32_on_cpu_and_is_at_least_as_accurate(monkeypatch):
    """In bf16 CPU training the attention core is computed in fp32 (the bf16 CPU kernel's backward is slow).

    Output and input gradient are compared with an fp64 oracle on the same bf16
    q, k, v: the fp32 core must be no less accurate than the bf16 kernel.
    """
    import modules.clip_vit as clip_vit
    from modules.clip_vit import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(64, 4)
    x = torch.randn(3, 50, 64) * 2
    grad_out = torch.randn(3, 50, 64)

    def run(fp32_core: bool):
        monkeypatch.setattr(clip_vit, "_fp32_attention_core", lambda q: fp32_core)
        captured = {}
        real = torch.nn.functional.linear

        def spy(inp, weight, bias=None):  # the attention core's input: the in-projection's bf16 output
            out = real(inp, weight, bias)
            if weight is attn.in_proj_weight:
                out.retain_grad()
                captured["qkv"] = out
            return out

        monkeypatch.setattr(clip_vit.F, "linear", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(x.requires_grad_())
        out.float().backward(grad_out)
        monkeypatch.setattr(clip_vit.F, "linear", real)
        return captured["qkv"], attn.out_proj.weight.grad.clone()

    errors = {}
    for fp32_core in (False, True):
        attn.zero_grad()
        qkv, _ = run(fp32_core)
        assert qkv.dtype == torch.bfloat16
        with torch.enable_grad():
            leaf = qkv.detach().double().requires_grad_()
            core = _attention_fp64(leaf, 4)
        # The out projection's weight gradient is core^T · grad: compare the core through it.
        expected = grad_out.double().reshape(-1, 64).T @ core.detach().reshape(-1, 64)
        errors[fp32_core] = (attn.out_proj.weight.grad.double() - expected).abs().max().item()
        expected_in = torch.autograd.grad(core, leaf, _out_proj_grad(attn, grad_out))[0]
        errors[(fp32_core, "input")] = (qkv.grad.double() - expected_in).abs().max().item()
    assert errors[True] <= errors[False] * 1.05 + 1e-6, errors
    assert errors[(True, "input")] <= errors[(False, "input")] * 1.05 + 1e-6, errors


def _out_proj_grad(attn, grad_out: torch.Tensor) -> torch.Tensor:
    """The gradient reaching the attention core's output: grad_out through out_proj (fp64)."""
    return grad_out.double() @ attn.out_proj.weight.double()


def test_fp32_attention_core_only_for_cpu_bf16_training():
    from modules.clip_vit import _fp32_attention_core

    bf16 = torch.zeros(2, 4, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    assert _fp32_attention_core(bf16)
    assert not _fp32_attention_core(bf16.detach())  # inference keeps the (faster) bf16 kernel
    with torch.no_grad():
        assert not _fp32_attention_core(bf16)
    assert not _fp32_attention_core(torch.zeros(2, 4, 5, 8, requires_grad=True))  # fp32: nothing to change
    assert not _fp32_attention_core(torch.zeros(2, 4, 5, 8, dtype=torch.bfloat16, device="meta",
                                                requires_grad=True))  # other devices keep their kernels


def test_rejects_images_of_the_wrong_size():
    model = VisionTransformer(VISION_CONFIGS["tiny"])
    with pytest.raises(ValueError, match="64"):
        model(torch.randn(1, 3, 32, 32))


def test_quick_gelu_gradient_and_what_it_keeps_for_backward():
    """The hand-written backward matches x·σ(1.702x) differentiated by autograd, and keeps one tensor."""
    gelu = QuickGELU()
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gelu, (x,))
    x32 = torch.randn(1000, requires_grad=True)
    g = torch.randn(1000)
    gelu(x32).backward(g)
    ours = x32.grad.clone()
    x32.grad = None
    (x32 * torch.sigmoid(1.702 * x32)).backward(g)
    torch.testing.assert_close(ours, x32.grad, rtol=1e-6, atol=1e-6)

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        gelu(torch.randn(8, 16, requires_grad=True))
    assert saved == [torch.Size([8, 16])]  # one tensor (1.702x): σ(1.702x) is recomputed in backward
