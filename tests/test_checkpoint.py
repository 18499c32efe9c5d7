"""Every checkpoint format loads to the same tensors; every bad input gives a clear error."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from modules.checkpoint import CheckpointError, HeadsConfig, load_checkpoint
from modules.clip_vit import ResidualAttentionBlock, VisionConfig, VisionTransformer
from modules.config import VISION_CONFIGS
from tests.clip_state_dicts import openai_state_dict, to_v1_storage, v1_heads

TINY = VISION_CONFIGS["tiny"]
ODD = VisionConfig(image_size=48, patch_size=8, width=64, layers=3, heads=1, embed_dim=32)


def visual_of(state: dict, prefix: str = "visual.") -> dict:
    return {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}


def assert_encoder(ckpt, expected_visual: dict, config: VisionConfig) -> None:
    """Same names, fp32, exact values, and a strict load into a model of the inferred shape."""
    assert ckpt.vision == config
    assert ckpt.visual_state.keys() == expected_visual.keys()
    for key, value in expected_visual.items():
        assert ckpt.visual_state[key].dtype == torch.float32, key
        assert torch.equal(ckpt.visual_state[key], value), key
    VisionTransformer(ckpt.vision).load_state_dict(ckpt.visual_state, strict=True)


def ignored_counts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rice" and "ignored" in r.getMessage()]


def v1_state(config=TINY, heads: dict | None = None, seed=0) -> dict:
    """A RICE v1 file: `clip.`-prefixed CLIP (with text tower), heads, fp16 matrices."""
    clip = {"clip." + k: v for k, v in openai_state_dict(config, seed=seed).items()}
    return to_v1_storage({**clip, **(heads or {})})


# --- OpenAI ---------------------------------------------------------------------------


class Holder(nn.Module):
    """A module tree rebuilt from a flat state dict, so TorchScript can save it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_from_state_dict(state: dict) -> nn.Module:
    root = Holder()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        if value.is_floating_point() and value.dim() > 0:
            module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    return torch.jit.script(root)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated
def test_openai_torchscript_archive(tmp_path, caplog):
    state = to_v1_storage(openai_state_dict(TINY))  # OpenAI stores matrices in fp16 too
    state["input_resolution"] = torch.tensor(64)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(100)
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torchscript_from_state_dict(state), str(path))
    with caplog.at_level(logging.INFO, logger="rice"):
        ckpt = load_checkpoint(path)
    assert ckpt.format == "openai" and ckpt.path == str(path)
    assert_encoder(ckpt, visual_of(state), TINY)
    assert ckpt.heads is None and ckpt.heads_state == {} and ckpt.video_pooling == "v1" and ckpt.extra == {}
    n_text = sum(not k.startswith("visual.") for k in state)
    assert ignored_counts(caplog) == [f"{path}: ignored {n_text} CLIP text-tower keys (not used by RICE)"]
    assert set(ckpt.text_init) == {"positional_embedding"} | {
        "resblock0." + k for k in ResidualAttentionBlock(64, 1).state_dict()
    }
    assert torch.equal(ckpt.text_init["positional_embedding"], state["positional_embedding"].float())


def test_openai_plain_state_dict_of_any_shape(tmp_path):
    state = openai_state_dict(ODD, text_layers=2)
    torch.save(state, tmp_path / "plain.pt")
    ckpt = load_checkpoint(tmp_path / "plain.pt")
    assert ckpt.format == "openai"
    assert_encoder(ckpt, visual_of(state), ODD)
    # text block 0 loads into the block the PMD self-attention uses
    block = ResidualAttentionBlock(64, 1)
    block.load_state_dict({k.removeprefix("resblock0."): v for k, v in ckpt.text_init.items() if "resblock0." in k})
    assert torch.equal(block.mlp.c_fc.weight, state["transformer.resblocks.0.mlp.c_fc.weight"])


# --- RICE v1 -------------------------------------------------------------------------


def test_rice_v1_with_pmd_and_pfr(tmp_path, caplog):
    gen = torch.Generator().manual_seed(3)
    heads = v1_heads(TINY.embed_dim, gen)
    state = v1_state(heads=heads)
    assert state["clip.visual.conv1.weight"].dtype == torch.float16
    torch.save(state, tmp_path / "pytorch_model.bin.2")
    with caplog.at_level(logging.INFO, logger="rice"):
        ckpt = load_checkpoint(tmp_path / "pytorch_model.bin.2")
    assert ckpt.format == "rice_v1" and ckpt.video_pooling == "v1"
    assert_encoder(ckpt, visual_of(state, "clip.visual."), TINY)
    assert ckpt.heads == HeadsConfig("cross_attention", cross_num_hidden_layers=2, recons_feat=True, pmd_heads=8)
    assert ckpt.heads_state.keys() == heads.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, heads[k]) for k, v in ckpt.heads_state.items())
    n_text = sum(k.startswith("clip.") and not k.startswith("clip.visual.") for k in state)
    assert ignored_counts(caplog) == [
        f"{tmp_path / 'pytorch_model.bin.2'}: ignored {n_text} CLIP text-tower keys (not used by RICE)"
    ]
    assert ckpt.text_init["resblock0.attn.in_proj_weight"].dtype == torch.float32
    assert torch.equal(ckpt.text_init["resblock0.ln_1.weight"], state["clip.transformer.resblocks.0.ln_1.weight"])


@pytest.mark.parametrize(
    "self_blocks, cross, pmd_heads, expected",
    [
        (1, True, None, HeadsConfig("cross_attention", 2, recons_feat=False, pmd_heads=8)),
        (1, True, 4, HeadsConfig("cross_attention", 2, recons_feat=True, pmd_heads=4)),
        (2, True, 8, HeadsConfig("cross_attention", 3, recons_feat=True, pmd_heads=8)),
        (1, False, None, HeadsConfig("cross_attention", 1, recons_feat=False, pmd_heads=8)),
    ],
)
def test_rice_v1_head_shapes_are_inferred(tmp_path, self_blocks, cross, pmd_heads, expected):
    heads = v1_heads(TINY.embed_dim, torch.Generator().manual_seed(0), self_blocks, cross, pmd_heads)
    torch.save(v1_state(heads=heads), tmp_path / "v1.bin")
    assert load_checkpoint(tmp_path / "v1.bin").heads == expected


def test_rice_v1_without_heads(tmp_path):
    torch.save(v1_state(config=ODD), tmp_path / "icl.bin")
    ckpt = load_checkpoint(tmp_path / "icl.bin")
    assert ckpt.format == "rice_v1" and ckpt.vision == ODD and ckpt.heads is None and ckpt.heads_state == {}


# --- RICE v2 -------------------------------------------------------------------------


def v2_state() -> dict:
    visual = visual_of(openai_state_dict(TINY))
    state = {"module.image_encoder.model." + k: v for k, v in visual.items()}
    state["module.transformer.decoder.0.weight"] = torch.randn(768, 768)  # its own PMD variant
    state["module.transformer.head.bias"] = torch.randn(1)
    return state


def test_rice_v2_raw_state_dict(tmp_path, caplog):
    state = v2_state()
    torch.save(state, tmp_path / "rice_final.pth")
    with caplog.at_level(logging.INFO, logger="rice"):
        ckpt = load_checkpoint(tmp_path / "rice_final.pth")
    assert ckpt.format == "rice_v2" and ckpt.video_pooling == "v2"
    assert_encoder(ckpt, visual_of(state, "module.image_encoder.model."), TINY)
    assert ckpt.heads is None and ckpt.text_init == {}
    assert ignored_counts(caplog) == [
        f"{tmp_path / 'rice_final.pth'}: ignored 2 v2 head keys under 'module.transformer.' (not used)"
    ]


def test_rice_v2_training_checkpoint(tmp_path):
    state = v2_state()
    training = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6}]},
                "lr_scheduler": {"last_epoch": 10}, "config": {"batch_size": 8}}
    torch.save(training, tmp_path / "iter10.ckpt")
    ckpt = load_checkpoint(tmp_path / "iter10.ckpt")
    assert ckpt.format == "rice_v2"
    assert_encoder(ckpt, visual_of(state, "module.image_encoder.model."), TINY)


# --- ours ----------------------------------------------------------------------------


def our_model_state() -> dict:
    visual = {k: v for k, v in openai_state_dict(TINY).items() if k.startswith("visual.")}
    return {**visual, **v1_heads(TINY.embed_dim, torch.Generator().manual_seed(1))}


def test_our_format_takes_its_config_and_keeps_the_rest(tmp_path):
    model = our_model_state()
    vision = {**TINY.to_dict(), "heads": 4}  # heads cannot be read from shapes
    config = {"vision": vision, "sim_header": "cross_attention", "cross_num_hidden_layers": 2,
              "recons_feat": True, "pmd_heads": 8, "video_pooling": "v2"}
    torch.save({"format": "rice-repro", "format_version": 1, "model": model, "model_config": config,
                "step": 7, "args": {"lr": 3e-4}}, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt.format == "ours" and ckpt.vision == VisionConfig(**vision) and ckpt.video_pooling == "v2"
    assert ckpt.heads == HeadsConfig("cross_attention", 2, True, 8)
    assert ckpt.extra == {"format": "rice-repro", "format_version": 1, "model_config": config,
                          "step": 7, "args": {"lr": 3e-4}}
    assert_encoder(ckpt, visual_of(model), VisionConfig(**vision))


def test_our_format_without_config_and_bare_model_state(tmp_path):
    model = our_model_state()
    torch.save({"format": "rice-repro", "format_version": 1, "model": model}, tmp_path / "a.pt")
    torch.save(model, tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt.format == "ours" and ckpt.vision == TINY and ckpt.heads.recons_feat


def test_our_format_config_must_match_shapes(tmp_path):
    config = {"vision": {**TINY.to_dict(), "width": 256}}
    torch.save({"format": "rice-repro", "model": our_model_state(), "model_config": config}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c\.pt.*disagrees.*width"):
        load_checkpoint(tmp_path / "c.pt")


# --- bad inputs ----------------------------------------------------------------------


class Opaque:
    """A pickled class: loading it would mean running code from the file."""


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found: .*nothing\.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize("how", ["truncated", "text"])
def test_truncated_or_foreign_file(tmp_path, how):
    path = tmp_path / "bad.pt"
    if how == "truncated":
        torch.save(v1_state(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("model: ViT-B/32\n")
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable PyTorch checkpoint \(truncated"):
        load_checkpoint(path)


def test_pickled_code_is_not_run(tmp_path):
    torch.save({"model": openai_state_dict(TINY), "args": Opaque()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match=r"unsafe\.pt: holds pickled .* \(tests\.test_checkpoint\.Opaque\)"):
        load_checkpoint(tmp_path / "unsafe.pt")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update({"clip.visual.extra.weight": torch.ones(1)}),
         r"unexpected \['clip\.visual\.extra\.weight'\]"),
        (lambda s: s.update({"optimizer.step": torch.ones(1)}), r"unexpected keys for a rice_v1.*'optimizer\.step'"),
        (lambda s: s.pop("clip.visual.ln_post.bias"), r"missing \['clip\.visual\.ln_post\.bias'\]"),
        (lambda s: s.pop("similarity_dense.bias"), r"PMD/PFR keys.*missing \['similarity_dense\.bias'\]"),
        (lambda s: s.update({"clip.visual.class_embedding": torch.ones(5)}), r"wrong shape.*class_embedding \(5,\)"),
        (lambda s: s.update({f"clip.x{i}": torch.ones(1) for i in range(7)}), r"'clip\.x4'\] \(\+2 more\)"),
    ],
    ids=["unexpected-visual", "unexpected-top", "missing-visual", "missing-head", "shape", "many"],
)
def test_wrong_keys_are_named(tmp_path, edit, message):
    state = v1_state(heads=v1_heads(TINY.embed_dim, torch.Generator().manual_seed(0)))
    edit(state)
    torch.save(state, tmp_path / "v1.bin")
    with pytest.raises(CheckpointError, match=r"v1\.bin: .*" + message):
        load_checkpoint(tmp_path / "v1.bin")


@pytest.mark.parametrize(
    "obj, message",
    [
        (torch.ones(3), "expected a state dict, found a Tensor"),
        ({"encoder.weight": torch.ones(3)}, "no CLIP vision encoder found"),
        ({"visual.conv1.weight": torch.ones(3), "epoch": 3}, "entries that are not tensors: \\['epoch'\\]"),
    ],
)
def test_not_a_clip_checkpoint(tmp_path, obj, message):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "x.pt")
