"""The v2 release's heads (recipe `v2_release`, docs/recipes.md): its PMD decoder ("vim") and PFR ("rec").

The v2 decoder works on the encoder's tokens BEFORE `ln_post` and `proj`
(width = the encoder width, 768 for ViT-B/32), with `pmd_heads` (8) heads.
Per depth unit it has two layers, which the v2 code initialised from the LAST
two CLIP visual blocks:

    decoder.layers.{2i}    self block over the image tokens: x + MHA(ln_1(x)), x + MLP(ln_2(x)) (eps 1e-12)
    decoder.layers.{2i+1}  cross block: x + MHA(q = ln_1(x), k = v = the raw video tokens), x + MLP(ln_2(x))
                           (eps 1e-5; the keys and values are not normalised; dropout 0.1 on the probabilities)
    decoder.pooler         ln (eps 1e-5), the CLS row, a bias-free Linear(E, E), ReLU

The pair score is 10 · cos(pooled, w) with `vim.weight` w [1, E] (no bias).
PFR (`rec`) reduces the cross blocks' attention maps, which v2 returned
multiplied by sqrt(head dim), with two 1x1 convolutions (all weights 1 and
zero biases at the start, ReLUs), then a softmax over the keys.

The v2 decoder also held an embedding module (class token, positions,
LayerNorm) that its forward pass never used; it is not built here, and
its tensors are skipped when a v2 checkpoint is read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.clip_vit import ResidualAttentionBlock, clip_mlp
from modules.losses import at_least_fp32

V2_SELF_EPS = 1e-12  # v2's own LayerNorm class in the self block
V2_EPS = 1e-5  # torch LayerNorms of the cross block and the pooler
V2_DROPOUT = 0.1
V2_SCORE_SCALE = 10.0  # vim logits: 10 · cos


class V2CrossBlock(nn.Module):
    """v2's cross layer; parameter names as CLIP's blocks (`attn.in_proj_*`, `attn.out_proj`, `ln_*`, `mlp`)."""

    def __init__(self, width: int, heads: int, dropout: float = V2_DROPOUT):
        super().__init__()
        if width % heads:
            raise ValueError(f"v2 decoder width {width} is not divisible by pmd_heads {heads}")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width, eps=V2_EPS)
        self.attn = nn.Module()
        self.attn.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.attn.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.attn.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.attn.in_proj_weight)
        self.ln_2 = nn.LayerNorm(width, eps=V2_EPS)
        self.mlp = clip_mlp(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, y, key_mask, y_index=None):
        """x [P, N, E] queries; y [V, M, E] video tokens, key_mask [V, M] bool; y_index [P] or None (V = P).

        Returns the new queries and the attention probabilities times sqrt(head dim) [P, H, N, M] (fp32).
        """
        p, n, width = x.shape
        v_count, m = y.shape[:2]
        dh = width // self.heads
        wq, wk, wv = self.attn.in_proj_weight.chunk(3)
        bq, bk, bv = self.attn.in_proj_bias.chunk(3)
        q = F.linear(self.ln_1(x), wq, bq).view(p, n, self.heads, dh).transpose(1, 2)
        k = F.linear(y, wk, bk).view(v_count, m, self.heads, dh).transpose(1, 2)
        v = F.linear(y, wv, bv).view(v_count, m, self.heads, dh).transpose(1, 2)
        if y_index is not None:
            k, v, key_mask = (t.index_select(0, y_index) for t in (k, v, key_mask))
        scores = at_least_fp32(q * dh**-0.5) @ at_least_fp32(k).transpose(-1, -2)  # [P, H, N, M]
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        out = (self.dropout(probs).to(v.dtype) @ v).transpose(1, 2).reshape(p, n, width)
        x = x + self.attn.out_proj(out)
        return x + self.mlp(self.ln_2(x)), probs * dh**0.5


class V2Pooler(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(width, eps=V2_EPS)
        self.dense = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.dense(self.layer_norm(x)[:, 0]))


class V2Decoder(nn.Module):
    """`depth` pairs of (self block, cross block), then the pooler. v2: depth 1."""

    def __init__(self, width: int, heads: int, depth: int = 1):
        super().__init__()
        blocks = []
        for _ in range(depth):
            blocks += [ResidualAttentionBlock(width, heads, layer_norm_eps=V2_SELF_EPS), V2CrossBlock(width, heads)]
        self.layers = nn.ModuleList(blocks)
        self.pooler = V2Pooler(width)

    def forward(self, image_tokens, video_tokens, video_mask, video_index=None):
        """Returns pooled [P, E] and the cross blocks' maps concatenated over heads [P, depth·H, N, M]."""
        x, maps = image_tokens, []
        for layer in self.layers:
            if isinstance(layer, V2CrossBlock):
                x, probs = layer(x, video_tokens, video_mask, video_index)
                maps.append(probs)
            else:
                x = layer(x)
        return self.pooler(x), torch.cat(maps, dim=1)

    def init_v2(self, visual_blocks: nn.ModuleList) -> None:
        """v2's initialisation: N(0, 0.02) linears, unit LayerNorms, then the layers from the LAST CLIP blocks."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.02)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            sources = list(visual_blocks)[-len(self.layers):]
            if len(sources) != len(self.layers):
                raise ValueError(f"the encoder has {len(visual_blocks)} blocks; the v2 decoder needs "
                                 f"{len(self.layers)}")
            for layer, source in zip(self.layers, sources):
                layer.load_state_dict(source.state_dict(), strict=True)


def v2_reconstruction_head(channels: int) -> nn.Sequential:
    """`rec`: Conv(C -> C/2), ReLU, Conv(C/2 -> 1), ReLU, 1x1, with v2's start: weights 1, biases 0."""
    if channels < 2 or channels % 2:
        raise ValueError(f"v2 PFR halves the channels, so depth x pmd_heads must be even (got {channels})")
    rec = nn.Sequential(nn.Conv2d(channels, channels // 2, 1), nn.ReLU(), nn.Conv2d(channels // 2, 1, 1), nn.ReLU())
    with torch.no_grad():
        for conv in (rec[0], rec[2]):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    return rec


def v2_scores(pooled: torch.Tensor, vim_weight: torch.Tensor) -> torch.Tensor:
    """10 · cos(pooled, w): [P, E], [1, E] -> [P], in fp32."""
    return V2_SCORE_SCALE * (F.normalize(at_least_fp32(pooled), dim=-1) @ F.normalize(at_least_fp32(vim_weight),
                                                                                     dim=-1).T).squeeze(-1)
