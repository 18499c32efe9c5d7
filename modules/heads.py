"""RICE heads: the pairwise matching decoder (PMD) and the PFR head reduction.

PMD (docs/method.md, PMD) scores one (shop image, video) pair. The queries are the
image's tokens plus learned position embeddings; the keys and values are the
video's tokens (all frames concatenated, padded frames masked). The layout and
parameter names follow the v1 release so its checkpoints load unchanged:

    cross.embeddings.position_embeddings.weight          [77, E]
    cross.transformer.resblocks.{i}.*                    self blocks (CLIP text-block names)
    cross.transformer.cross_attention.attn.{query,key,value}.*
    cross.transformer.cross_attention.{ln_1,mlp.c_fc,mlp.c_proj,ln_2}.*
    cross.pooler.{ln_pool,dense}.*
    similarity_dense.*   (Linear(E, 1), owned by the model: see modules/rice.py)

Depth (`cross_num_hidden_layers` = L >= 1): L - 1 self-attention blocks over
the image tokens, then ONE cross-attention block. L = 2 is the v1 setting (one
self block + one cross block); L = 1 is the cross block alone.

PFR (docs/method.md, PFR) turns the cross-attention probabilities of a pair, one map
per head, into a single reconstruction weight map with two 1×1 convolutions
(`recons_weights.conv.0` H -> H/2, ReLU, `recons_weights.conv.2` H/2 -> 1, ReLU).

Dropout (0.1, the v1 rate) is applied to the queries after the position
embeddings are added and to the cross-attention probabilities. Dropout has no
parameters, so its exact placement is our choice; `model.eval()` turns it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.clip_vit import QuickGELU, ResidualAttentionBlock, clip_mlp
from modules.losses import at_least_fp32

PMD_LAYER_NORM_EPS = 1e-12  # every LayerNorm inside the v1 decoder
PMD_DROPOUT = 0.1
PMD_POSITIONS = 77  # rows of the v1 position table (CLIP's text context length)
MASKED_SCORE = -1e6  # added to the scores of padded keys before the softmax


class CrossEmbeddings(nn.Module):
    """Learned positions added to the image queries (never to the video keys)."""

    def __init__(self, width: int, positions: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(positions, width)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[P, N, E] -> [P, N, E] with rows 0..N-1 of the table added."""
        n = image_tokens.shape[1]
        return image_tokens + self.position_embeddings.weight[:n].to(image_tokens.dtype)


class CrossAttention(nn.Module):
    """Multi-head attention of queries x over keys/values y, v1 layout.

    Separate `query`, `key`, `value` projections with bias and NO output
    projection: the merged heads go straight to the residual.
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"PMD width {width} is not divisible by pmd_heads {heads}")
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def project_keys(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y [V, M, E] -> keys and values [V, H, M, Dh], once per video."""
        videos, m, width = y.shape
        dh = width // self.heads
        k = self.key(y).view(videos, m, self.heads, dh).transpose(1, 2)
        v = self.value(y).view(videos, m, self.heads, dh).transpose(1, 2)
        return k, v

    def attend(
        self,
        x: torch.Tensor,
        keys: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor,
        y_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [P, N, E] queries; keys = `project_keys` of V videos, key_mask [V, M] bool (True = valid);
        y_index [P] long: the video of each query row (None: V = P, row i has video i).

        Returns the attended values [P, N, E] and the attention probabilities
        [P, H, N, M] (fp32, before dropout).
        """
        p, n, width = x.shape
        dh = width // self.heads
        k, v = keys
        q = self.query(x).view(p, n, self.heads, dh).transpose(1, 2)  # [P, H, N, Dh]
        if y_index is not None:
            # index_select, not k[y_index]: its backward is an index_add (a sum in pair order),
            # several times faster on CPUs than the accumulating index_put of advanced indexing.
            k, v, key_mask = (t.index_select(0, y_index) for t in (k, v, key_mask))  # [P, ...]
        scores = at_least_fp32(q @ k.transpose(-1, -2)) * dh**-0.5  # [P, H, N, M]
        scores = scores + (~key_mask).to(scores.dtype)[:, None, None, :] * MASKED_SCORE
        probs = scores.softmax(dim=-1)
        out = self.dropout(probs).to(v.dtype) @ v  # [P, H, N, Dh]
        return out.transpose(1, 2).reshape(p, n, width), probs

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor, y_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`attend` over the keys of y [V, M, E]: each video is projected once, then gathered by y_index."""
        return self.attend(x, self.project_keys(y), key_mask, y_index)


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross block; one LayerNorm `ln_1` normalises queries and keys/values."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=PMD_LAYER_NORM_EPS)
        self.attn = CrossAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width, eps=PMD_LAYER_NORM_EPS)
        self.mlp = clip_mlp(width)

    def video_side(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [V, H, M, Dh] of videos y [V, M, E]: the part that depends on the video only."""
        return self.attn.project_keys(self.ln_1(y))

    def attend(
        self,
        x: torch.Tensor,
        keys: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor,
        y_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, probs = self.attn.attend(self.ln_1(x), keys, key_mask, y_index)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), probs

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor, y_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attend(x, self.video_side(y), key_mask, y_index)


class CrossTransformer(nn.Module):
    """`depth - 1` self blocks over the queries, then one cross block."""

    def __init__(self, width: int, heads: int, depth: int, dropout: float):
        super().__init__()
        if depth < 1:
            raise ValueError(f"cross_num_hidden_layers must be >= 1 (got {depth}); v1 uses 2")
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, layer_norm_eps=PMD_LAYER_NORM_EPS) for _ in range(depth - 1)
        )
        self.cross_attention = CrossAttentionBlock(width, heads, dropout)

    def self_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The self blocks over the queries [P, N, E]: they see the image side only."""
        for block in self.resblocks:
            x = block(x)
        return x

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor, y_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross_attention(self.self_blocks(x), y, key_mask, y_index)


class Pooler(nn.Module):
    """LayerNorm, take the CLS query, Linear(E, E), QuickGELU."""

    def __init__(self, width: int):
        super().__init__()
        self.ln_pool = nn.LayerNorm(width, eps=PMD_LAYER_NORM_EPS)
        self.dense = nn.Linear(width, width)
        self.activation = QuickGELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.ln_pool(x[:, 0])))


class PairwiseMatchingDecoder(nn.Module):
    """PMD body (`cross.*`): image tokens attend to video tokens; returns the pooled pair feature.

    The score itself is `similarity_dense(pooled)`, a layer the model owns
    because v1 stores it outside `cross.*`.

    A pair's computation splits into an image side (position embeddings,
    dropout, the self blocks: `image_side`), a video side (the cross block's
    LayerNorm and key/value projections: `video_side`) and the pair part (the
    cross block's queries, attention and MLP, the pooler: `decode`). Scoring
    many pairs runs each side once per image and once per video and gathers
    them by index; the numbers are those of running every pair alone.
    """

    def __init__(self, width: int, heads: int, depth: int, num_queries: int, dropout: float = PMD_DROPOUT):
        super().__init__()
        # v1 has 77 rows; a tower with more tokens (e.g. ViT-B/16) gets a longer table.
        self.embeddings = CrossEmbeddings(width, max(PMD_POSITIONS, num_queries))
        self.dropout = nn.Dropout(dropout)
        self.transformer = CrossTransformer(width, heads, depth, dropout)
        self.pooler = Pooler(width)

    def image_side(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[I, N, E] image tokens -> [I, N, E] queries of the cross block (positions, dropout, self blocks)."""
        return self.transformer.self_blocks(self.dropout(self.embeddings(image_tokens)))

    def video_side(self, video_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[V, M, E] video tokens -> the cross block's keys and values, each [V, H, M, Dh]."""
        return self.transformer.cross_attention.video_side(video_tokens)

    def decode(
        self,
        queries: torch.Tensor,
        keys: tuple[torch.Tensor, torch.Tensor],
        video_mask: torch.Tensor,
        video_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair part: pair p is (queries[image_index[p]], video video_index[p]); an index left None
        means row p of that side. Returns pooled [P, E] and attention [P, H, N, M] as `forward` does."""
        x = queries if image_index is None else queries.index_select(0, image_index)
        x, attention = self.transformer.cross_attention.attend(x, keys, video_mask, video_index)
        return self.pooler(x), attention

    def forward(
        self,
        image_tokens: torch.Tensor,
        video_tokens: torch.Tensor,
        video_mask: torch.Tensor,
        video_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode P pairs.

        Args:
            image_tokens: [I, N, E] projected image tokens, CLS first.
            video_tokens: [V, M, E] projected tokens of all frames (M = T·N) of V videos.
            video_mask: [V, M] bool, True = a token of a real frame.
            video_index: [P] long, the video of each pair; None when V = P and
                pair i is (image i, video i).
            image_index: [P] long, the image of each pair; None when I = P and
                pair i has image i.
            Pass each image and each video once with an index when they repeat
            (re-ranking, hard negatives): each side then runs once per image
            or video. In training mode the query dropout is then drawn once
            per image, shared by that image's pairs.

        Returns:
            pooled: [P, E] pair features.
            attention: [P, H, N, M] cross-attention probabilities (fp32).
        """
        return self.decode(self.image_side(image_tokens), self.video_side(video_tokens), video_mask,
                           video_index, image_index)


class ReconstructionWeights(nn.Module):
    """PFR head reduction (`recons_weights.conv`): [P, H, N, M] -> [P, N, M], non-negative."""

    def __init__(self, heads: int):
        super().__init__()
        if heads < 2 or heads % 2:
            raise ValueError(f"PFR halves the head count, so pmd_heads must be even and >= 2 (got {heads})")
        self.conv = nn.Sequential(
            nn.Conv2d(heads, heads // 2, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(heads // 2, 1, kernel_size=1),
            nn.ReLU(),
        )
        # Start alive: with a negative output the final ReLU would cut every
        # gradient and PFR would never train. Zero biases and a non-negative
        # output conv make W >= 0 and non-zero for non-negative attention.
        with torch.no_grad():
            for conv in (self.conv[0], self.conv[2]):
                conv.bias.zero_()
            self.conv[2].weight.abs_()

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return self.conv(attention).squeeze(1)


def drop_cls(attention: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Remove the CLS query row and every frame's CLS key column.

    [P, H, N, T·N] -> [P, H, N-1, T·(N-1)], where N = tokens_per_frame.
    """
    p, h, n, m = attention.shape
    frames = m // tokens_per_frame
    attention = attention[:, :, 1:].reshape(p, h, n - 1, frames, tokens_per_frame)
    return attention[..., 1:].reshape(p, h, n - 1, frames * (tokens_per_frame - 1))


def load_text_init(decoder: PairwiseMatchingDecoder, text_init: dict[str, torch.Tensor]) -> None:
    """Initialise the first self block and the position table from a CLIP text tower.

    `text_init` holds "positional_embedding" [77, E] and "resblock0.<param>"
    (CLIP text block 0, `ResidualAttentionBlock` names); see docs/method.md, PMD.
    Raises ValueError when the text tower's width differs from the decoder's.
    """
    table = decoder.embeddings.position_embeddings.weight
    positions = text_init["positional_embedding"]
    if positions.shape[1] != table.shape[1] or positions.shape[0] > table.shape[0]:
        raise ValueError(
            f"CLIP text positional embedding {tuple(positions.shape)} does not fit the PMD position "
            f"table {tuple(table.shape)}: the text tower width must equal the vision embed_dim"
        )
    with torch.no_grad():
        table[: positions.shape[0]].copy_(positions)
    if len(decoder.transformer.resblocks) == 0:
        return  # depth 1: no self block to initialise
    block = {k.removeprefix("resblock0."): v for k, v in text_init.items() if k.startswith("resblock0.")}
    try:
        decoder.transformer.resblocks[0].load_state_dict(block, strict=True)
    except RuntimeError as err:
        raise ValueError(f"CLIP text block 0 does not fit the PMD self block: {err}") from err


def pair_scores(pooled: torch.Tensor, similarity_dense: nn.Linear) -> torch.Tensor:
    """Raw PMD scores [P] from pooled features [P, E], computed in fp32 even under autocast."""
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        weight, bias = at_least_fp32(similarity_dense.weight), at_least_fp32(similarity_dense.bias)
        return F.linear(at_least_fp32(pooled), weight, bias).squeeze(-1)
