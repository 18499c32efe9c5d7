"""Random state dicts in the layouts of docs/checkpoints.md, written from the key lists of docs/checkpoints.md.

These are the oracles for the encoder and checkpoint tests: the key names
and shapes are spelled out here by hand, independently of `modules/`.
Values are rounded to fp16 (as OpenAI's and RICE v1's weights are stored),
so fp32 copies of them are exact in every implementation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modules.config import VisionConfig


def _block(prefix: str, width: int, gen: torch.Generator) -> dict[str, Tensor]:
    """A CLIP residual block: fused in-projection attention and a 4x MLP."""
    shapes = {
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "mlp.c_fc.weight": (4 * width, width),
        "mlp.c_fc.bias": (4 * width,),
        "mlp.c_proj.weight": (width, 4 * width),
        "mlp.c_proj.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
    }
    return {prefix + name: _random(name, shape, gen) for name, shape in shapes.items()}


def _random(name: str, shape: tuple[int, ...], gen: torch.Generator, std: float = 0.02) -> Tensor:
    """fp16-representable random values; LayerNorm gains near one."""
    noise = torch.randn(shape, generator=gen)
    value = 1.0 + 0.1 * noise if "ln_" in name and name.endswith("weight") else std * noise
    return value.half().float()


def openai_visual(config: VisionConfig, gen: torch.Generator, prefix: str = "visual.") -> dict[str, Tensor]:
    """The `visual.*` keys of an OpenAI CLIP ViT."""
    w, p = config.width, config.patch_size
    state = {
        "conv1.weight": _random("conv1.weight", (w, 3, p, p), gen),
        "class_embedding": _random("class_embedding", (w,), gen, std=0.1),
        "positional_embedding": _random("positional_embedding", (config.num_tokens, w), gen, std=0.1),
        "ln_pre.weight": _random("ln_pre.weight", (w,), gen),
        "ln_pre.bias": _random("ln_pre.bias", (w,), gen),
        "ln_post.weight": _random("ln_post.weight", (w,), gen),
        "ln_post.bias": _random("ln_post.bias", (w,), gen),
        "proj": _random("proj", (w, config.embed_dim), gen, std=w**-0.5),
    }
    for i in range(config.layers):
        state.update(_block(f"transformer.resblocks.{i}.", w, gen))
    return {prefix + k: v for k, v in state.items()}


def openai_text(embed_dim: int, gen: torch.Generator, width: int = 64, layers: int = 1,
                vocab: int = 100, context: int = 77, prefix: str = "") -> dict[str, Tensor]:
    """The CLIP text tower and `logit_scale` (small width, few layers, tiny vocabulary)."""
    state = {
        "token_embedding.weight": _random("token_embedding.weight", (vocab, width), gen),
        "positional_embedding": _random("positional_embedding", (context, width), gen),
        "ln_final.weight": _random("ln_final.weight", (width,), gen),
        "ln_final.bias": _random("ln_final.bias", (width,), gen),
        "text_projection": _random("text_projection", (width, embed_dim), gen),
        "logit_scale": torch.tensor(4.6052),
    }
    for i in range(layers):
        state.update(_block(f"transformer.resblocks.{i}.", width, gen))
    return {prefix + k: v for k, v in state.items()}


def openai_state_dict(config: VisionConfig, seed: int = 0, text_layers: int = 1) -> dict[str, Tensor]:
    """A full OpenAI CLIP state dict (vision tower of `config`, small text tower)."""
    gen = torch.Generator().manual_seed(seed)
    return {**openai_visual(config, gen), **openai_text(config.embed_dim, gen, layers=text_layers)}


def v1_heads(width: int, gen: torch.Generator, self_blocks: int = 1, cross: bool = True,
             pmd_heads: int | None = 8) -> dict[str, Tensor]:
    """RICE v1 PMD keys (and PFR keys when `pmd_heads` is given), docs/checkpoints.md."""
    state = {
        "cross.embeddings.position_embeddings.weight": _random("pos", (77, width), gen),
        "cross.pooler.ln_pool.weight": _random("ln_pool.weight", (width,), gen),
        "cross.pooler.ln_pool.bias": _random("ln_pool.bias", (width,), gen),
        "cross.pooler.dense.weight": _random("dense.weight", (width, width), gen),
        "cross.pooler.dense.bias": _random("dense.bias", (width,), gen),
        "similarity_dense.weight": _random("sim.weight", (1, width), gen),
        "similarity_dense.bias": _random("sim.bias", (1,), gen),
    }
    for i in range(self_blocks):
        state.update(_block(f"cross.transformer.resblocks.{i}.", width, gen))
    if cross:
        block = _block("cross.transformer.cross_attention.", width, gen)
        block = {k: v for k, v in block.items() if ".attn." not in k}
        for name in ("query", "key", "value"):
            block[f"cross.transformer.cross_attention.attn.{name}.weight"] = _random("w", (width, width), gen)
            block[f"cross.transformer.cross_attention.attn.{name}.bias"] = _random("bias", (width,), gen)
        state.update(block)
    if pmd_heads is not None:
        state["recons_weights.conv.0.weight"] = _random("c0", (pmd_heads // 2, pmd_heads, 1, 1), gen)
        state["recons_weights.conv.0.bias"] = _random("bias", (pmd_heads // 2,), gen)
        state["recons_weights.conv.2.weight"] = _random("c2", (1, pmd_heads // 2, 1, 1), gen)
        state["recons_weights.conv.2.bias"] = _random("bias", (1,), gen)
    return state


def to_v1_storage(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Store conv/linear/attention matrices in fp16, as RICE v1 files do."""
    return {k: v.half() if v.dim() >= 2 and "embedding" not in k else v for k, v in state.items()}
