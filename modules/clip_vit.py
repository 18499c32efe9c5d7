"""The CLIP vision transformer, with OpenAI's architecture and parameter names.

One encoder is shared by shop images and video frames (see docs/method.md). For a
batch of images it returns the projected CLS embedding and, on request, the
projected features of every token, which the pairwise matching decoder (PMD)
and patch feature reconstruction (PFR) consume.

Shapes for ViT-B/32 at 224 px: 7×7 patches + CLS = 50 tokens of width 768,
projected to 512.

Parameter names follow OpenAI's `visual.*` layout exactly (`conv1`,
`class_embedding`, `positional_embedding`, `ln_pre`, `transformer.resblocks.{i}`,
`ln_post`, `proj`), so an OpenAI or RICE state dict loads without renaming.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from modules.config import CLIP_MEAN, CLIP_STD, VisionConfig


class _QuickGELUFunction(torch.autograd.Function):
    """x·σ(1.702x) that keeps one tensor for the backward pass and runs it in one pass.

    Autograd's graph of `x * sigmoid(1.702 * x)` keeps both x and σ(1.702x);
    at the MLP's width (4x the model's) that is the largest saved activation
    of a block. This keeps only u = 1.702x. With s = σ(u) the derivative is
    d/dx = s + 1.702·x·s(1-s) = s·(1 + u(1-s)), which is exactly SiLU's
    derivative at u: the backward is PyTorch's fused `silu_backward(grad, u)`,
    one pass instead of the six elementwise passes of the formula written out.
    The forward computes x·σ(u) as before, bit for bit.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        u = torch.mul(x, 1.702)
        ctx.save_for_backward(u)
        return torch.sigmoid(u).mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (u,) = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad, u)


class QuickGELU(nn.Module):
    """The GELU approximation OpenAI's CLIP was trained with: x·σ(1.702x).

    Without gradients: one new buffer, filled in place (a second fresh buffer
    made fp32 CPU inference 6 % slower). With gradients: `_QuickGELUFunction`,
    which keeps 1.702x for a one-pass backward. Both compute x·σ(1.702x) bit
    for bit alike.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuickGELUFunction.apply(x)
        return torch.mul(x, 1.702).sigmoid_().mul_(x)


def _fp32_attention_core(q: torch.Tensor) -> bool:
    """Whether to run the attention core (softmax(q·kᵀ)·v) in fp32 for bf16 q, k, v: on CPUs, in training.

    PyTorch's CPU flash-attention backward is several times slower in bf16
    than in fp32 (one ViT-B/32 block, 16 images, 2-core Xeon with AMX:
    15.8 ms against 5.5 ms for forward and backward). Upcasting q, k and v and
    casting the output back costs less than that (the whole encoder trains
    ~1.18x faster in bf16 for it, `benchmarks/bench_encoder.py`) and is at
    least as accurate (the bf16 kernel accumulates in fp32 as well). The price:
    the backward keeps q, k, v in fp32 (twice their bf16 bytes). Inference
    keeps the bf16 kernel, whose forward is the faster one; GPUs are untouched.
    """
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()
            and q.requires_grad)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused input projection.

    Parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj`) match
    `nn.MultiheadAttention`, which is what OpenAI's checkpoints store; the
    computation goes through `scaled_dot_product_attention` on batch-first
    tensors, which picks the fused kernel for the device.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # [B, N, 3, H, Dh] -> three tensors of [B, H, N, Dh]
        q, k, v = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if _fp32_attention_core(q):
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, tokens, width)
        return self.out_proj(out)


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB pixels [..., 3, H, W] -> CLIP-normalised float32: (x / 255 - mean) / std per channel.

    The loaders hand over uint8 (a quarter of float32's bytes through shared
    memory and the host-to-device copy); this runs where the model runs.
    """
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return x.float().div_(255.0).sub_(mean).div_(std)


def clip_mlp(width: int) -> nn.Sequential:
    """CLIP's block MLP (width -> 4·width -> width, QuickGELU) under OpenAI's names c_fc / c_proj."""
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, 4 * width)),
        ("gelu", QuickGELU()),
        ("c_proj", nn.Linear(4 * width, width)),
    ]))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, layer_norm_eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.mlp = clip_mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks, optionally gradient-checkpointed per block."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisionTransformer(nn.Module):
    """CLIP image encoder: patchify, add CLS and positions, transformer, project."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        width, scale = config.width, config.width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """`conv1` as one matrix product: [B, 3, H, W] -> [B, grid*grid, width].

        A convolution whose stride equals its kernel is a linear map of each
        non-overlapping patch; cutting the patches out and multiplying by the
        flattened kernel gives the same numbers, and is faster on CPU (under
        bf16 autocast, CPUs without native bf16 would take a slow direct
        convolution path).
        """
        batch, channels, height, width = images.shape
        size, patch, grid = self.config.image_size, self.config.patch_size, self.config.grid_size
        if (height, width) != (size, size):
            raise ValueError(f"expected {size}x{size} images for this encoder, got {height}x{width}")
        patches = images.reshape(batch, channels, grid, patch, grid, patch)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, channels * patch * patch)
        return F.linear(patches, self.conv1.weight.reshape(self.conv1.out_channels, -1))

    def forward(
        self, images: torch.Tensor, return_tokens: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode a batch of images.

        Args:
            images: [B, 3, H, W], H = W = config.image_size: uint8 pixels (normalised
                here, `normalize_pixels`) or already normalised float pixels.
            return_tokens: also return the projected features of all tokens.

        Returns:
            embeddings: [B, embed_dim], `ln_post(CLS) @ proj`, not normalised.
            tokens: [B, num_tokens, embed_dim] (`ln_post` then `@ proj` on every
                token, CLS first) when `return_tokens`, else None.
        """
        if images.dtype == torch.uint8:
            images = normalize_pixels(images)
        x = self.embed_patches(images)  # [B, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        if return_tokens:
            tokens = self.ln_post(x) @ self.proj
            return tokens[:, 0], tokens
        return self.ln_post(x[:, 0]) @ self.proj, None
