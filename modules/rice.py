"""The RICE model: one shared CLIP image encoder plus the PMD and PFR heads.

Training (`forward`) takes a batch of (shop image, video clip) pairs and
returns the named losses (docs/method.md):

    loss = icl + pmd_weight · pmd + pfr_weight · pfr

Evaluation uses `encode_images` / `encode_videos` (L2-normalised embeddings
for ranking, optionally token features) and `score_pairs` (raw PMD scores for
re-ranking). Video embeddings follow the v1 rule by default (normalise each
frame, masked mean, normalise) or the v2 rule (masked mean, normalise).

Padded frames (frame_mask False) are never encoded: their embeddings and
tokens are zeros, they are left out of every mean, their keys are masked in
the PMD cross attention and their patches are zero in PFR, so their pixels
cannot change any output.

No device waits: a training step's forward and backward contain no
data-dependent device operation (no boolean-mask indexing, no nonzero, no
reading of a device value), so a GPU step never makes the host wait for the
device. The valid frames are found on the host, from the host copy of the
frame mask, and gathered and scattered on the device by index; the PMD
candidates and pairs stay on the device with fixed shapes (docs/design.md).

Distributed training: each process computes the losses of its local pairs
against the batch gathered from all processes (see modules/losses.py and docs/training.md). ICL
negatives and PMD hard negatives therefore come from the GLOBAL batch, and the
update with DDP-averaged gradients equals a single-process step on the whole
batch. Shards must have equal shapes (same batch size and frame count).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from modules.clip_vit import VisionTransformer
from modules.config import RICEConfig
from modules.heads import PairwiseMatchingDecoder, ReconstructionWeights, drop_cls, load_text_init, pair_scores
from modules.losses import (
    at_least_fp32,
    contrastive_loss,
    hard_negative_candidates,
    matching_loss,
    reconstruction_error,
)
from utils.errors import CheckpointError, ConfigError
from utils.runtime.distributed import all_gather, all_gather_with_grad, get_rank

if TYPE_CHECKING:
    from modules.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)

# Pairs PMD decodes at once when --pmd_chunk_size is not given (docs/training.md): small chunks keep a CPU
# in its caches; on a GPU each chunk is a handful of small kernel launches, so chunks are larger.
PMD_CHUNK_SIZE = {"cpu": 16, "cuda": 256}


def default_pmd_chunk_size(device: torch.device) -> int:
    return PMD_CHUNK_SIZE.get(device.type, PMD_CHUNK_SIZE["cpu"])


def valid_frames(frame_mask: torch.Tensor) -> torch.Tensor:
    """Flat positions b·T + t [F] of the real frames of a [B, T] mask, found where the mask is.

    Pass the host copy of the mask: on a device mask, learning F makes the host wait for the device.
    """
    return frame_mask.reshape(-1).nonzero().squeeze(1)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device` without waiting for the device (from pinned memory on CUDA)."""
    if x.device == device:
        return x
    if device.type == "cuda" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


class RICEModel(nn.Module):
    def __init__(self, config: RICEConfig):
        super().__init__()
        self.config = config
        width = config.vision.embed_dim
        self.visual = VisionTransformer(config.vision)
        self.cross = None
        self.similarity_dense = None
        self.recons_weights = None
        if config.use_pmd:
            self.cross = PairwiseMatchingDecoder(
                width, config.pmd_heads, config.cross_num_hidden_layers, config.vision.num_tokens
            )
            self.similarity_dense = nn.Linear(width, 1)
        if config.recons_feat:
            self.recons_weights = ReconstructionWeights(config.pmd_heads)
        self.grad_checkpointing = False
        self.pmd_shared_dropout = False

    # ---------------------------------------------------------------- building
    @classmethod
    def from_checkpoint(cls, ckpt: "LoadedCheckpoint", config_overrides: dict | None = None) -> "RICEModel":
        """Build the model a checkpoint describes and load every tensor (strict).

        The architecture comes from the checkpoint (our own format stores its
        RICEConfig; released formats are inferred from tensor shapes).
        `config_overrides` may change fields, e.g. {"sim_header": "mean_pooling"}
        to load only the encoder of an ICL+PMD checkpoint: heads the overridden
        config does not build are skipped with a log line; any other missing or
        unexpected key is an error.
        """
        config = ckpt.model_config()
        if config_overrides:
            config = RICEConfig.from_dict({**config.to_dict(), **config_overrides})
        if config.head_style == "v2" and cls is RICEModel:
            from modules.rice_v2 import RICEv2Model

            cls = RICEv2Model
        model = cls(config)
        state = {f"visual.{k}": v for k, v in ckpt.visual_state.items()}
        built = {name for name, module in model.named_children() if module is not None}
        built |= {name for name, _ in model.named_parameters(recurse=False)}
        skipped = sorted({k.split(".")[0] for k in ckpt.heads_state} - built)
        if skipped:
            log.info("%s: not loading head tensors %s (not built by this config)", ckpt.path, skipped)
        state.update({k: v for k, v in ckpt.heads_state.items() if k.split(".")[0] in built})
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{ckpt.path}: checkpoint does not match the model built for it "
                f"(missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''})"
            )
        return model

    def init_from_clip(self, ckpt: "LoadedCheckpoint") -> None:
        """Start training from CLIP: load the encoder; PMD self block 0 and positions from the text tower."""
        if ckpt.vision != self.config.vision:
            raise CheckpointError(
                f"{ckpt.path}: encoder {ckpt.vision} does not match the model's {self.config.vision}"
            )
        self.visual.load_state_dict(ckpt.visual_state, strict=True)
        if self.cross is None:
            return
        if ckpt.text_init:
            load_text_init(self.cross, ckpt.text_init)
            log.info("PMD: self block 0 and position embeddings initialised from the CLIP text tower")
        else:
            log.info("%s has no CLIP text tower: PMD self block and position embeddings keep their random init",
                     ckpt.path)

    @classmethod
    def from_rice_init(cls, ckpt: "LoadedCheckpoint", config: RICEConfig) -> "RICEModel":
        """A model of `config` (the heads the flags ask for) started from a RICE checkpoint.

        The encoder loads strictly; each head the checkpoint holds loads too,
        heads it lacks keep their initialisation. The PMD depth must agree.
        """
        stored = ckpt.heads
        if stored is not None and config.use_pmd and stored.cross_num_hidden_layers != config.cross_num_hidden_layers:
            raise ConfigError(f"{ckpt.path} has a PMD of depth {stored.cross_num_hidden_layers}; pass "
                              f"--cross_num_hidden_layers {stored.cross_num_hidden_layers}")
        model = cls(config)
        model.visual.load_state_dict(ckpt.visual_state, strict=True)
        built = {name for name, module in model.named_children() if module is not None and name != "visual"}
        state = {k: v for k, v in ckpt.heads_state.items() if k.split(".")[0] in built}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise CheckpointError(f"{ckpt.path}: tensors that do not fit the model: {unexpected[:8]}")
        missing_heads = sorted({k.split(".")[0] for k in missing if not k.startswith("visual.")})
        log.info("initialised from %s (%s)%s", ckpt.path, ckpt.format,
                 f"; heads not in the checkpoint start fresh: {missing_heads}" if missing_heads else "")
        return model

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder blocks and PMD chunks in the backward pass to save memory."""
        self.visual.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def set_pmd_chunk_size(self, size: int | None) -> None:
        """Pairs PMD decodes at once (training and `score_pairs`); None: by device (`PMD_CHUNK_SIZE`)."""
        self.config = replace(self.config, pmd_chunk_size=size)

    def pmd_chunk_size(self, device: torch.device) -> int:
        return self.config.pmd_chunk_size or default_pmd_chunk_size(device)

    def set_pmd_shared_dropout(self, enable: bool = True) -> None:
        """Training: draw PMD's query dropout once per image, shared by its candidate pairs (v1: per pair).

        The decoder's image side (positions, dropout, self blocks) then runs
        once per image instead of once per pair. Without dropout (eval mode)
        it always runs once per image, with the per-pair numbers.
        """
        self.pmd_shared_dropout = enable

    def _image_side_per_pair(self) -> bool:
        """Whether each pair needs its own image side: a per-pair dropout draw is active."""
        return self.cross.training and self.cross.dropout.p > 0 and not self.pmd_shared_dropout

    # ---------------------------------------------------------------- encoding
    def encode_images(self, images: torch.Tensor, return_tokens: bool = False):
        """images [B,3,H,W] -> (emb [B,E] L2-normalised, tokens [B,N,E] or None)."""
        _check_images(images, self.config.vision.image_size)
        emb, tokens = self.visual(images, return_tokens)
        return nn.functional.normalize(emb, dim=-1), tokens

    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor, return_tokens: bool = False,
                      frame_index: torch.Tensor | None = None):
        """frames [B,T,3,H,W], frame_mask [B,T] bool -> (emb [B,E], tokens [B,T*N,E] | None, mask [B,T*N] | None).

        A video with no valid frame gets a zero embedding and all-False token mask.
        Give the host copy of the mask, or with a device mask its `valid_frames`
        (see `encode_pairs`); the returned token mask is on the frames' device.
        """
        _check_frames(frames, frame_mask, self.config.vision.image_size)
        index, mask = _frame_plan(frame_mask, frame_index, frames.device)
        emb, tokens = self.visual(frames.flatten(0, 1)[index], return_tokens)
        return self._video_outputs(emb, tokens, index, mask)

    def pool_frames(self, frame_emb: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of the valid frames [F, E] (in mask order) + mask [B, T] -> video embeddings [B, E].

        The pooling `encode_videos` applies after its encoder pass (v1: normalise
        each frame, mean, normalise; v2: mean, normalise).
        """
        index, mask = _frame_plan(frame_mask, None, frame_emb.device)
        return self._video_outputs(frame_emb, None, index, mask)[0]

    def _video_outputs(self, frame_emb, frame_tokens, index, frame_mask):
        """Scatter per-valid-frame outputs (flat positions `index`) back to [B, T, ...] (zeros for padding), pool."""
        b, t = frame_mask.shape
        e = frame_emb.shape[-1]
        emb = frame_emb.new_zeros(b * t, e).index_copy(0, index, frame_emb).view(b, t, e)
        if self.config.video_pooling == "v1":
            emb = nn.functional.normalize(emb, dim=-1)  # zero rows stay zero
        count = frame_mask.sum(dim=1, keepdim=True).clamp(min=1).to(emb.dtype)
        video_emb = nn.functional.normalize(emb.sum(dim=1) / count, dim=-1)
        if frame_tokens is None:
            return video_emb, None, None
        n, e = frame_tokens.shape[1:]
        tokens = frame_tokens.new_zeros(b * t, n, e).index_copy(0, index, frame_tokens)
        token_mask = frame_mask[:, :, None].expand(b, t, n).reshape(b, t * n)
        return video_emb, tokens.view(b, t * n, e), token_mask

    # ---------------------------------------------------------------- scoring
    def score_pairs(
        self,
        image_tokens: torch.Tensor,
        video_tokens: torch.Tensor,
        video_token_mask: torch.Tensor,
        video_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw PMD scores (no ×100) of P pairs: [I,N,E], [V,M,E], [V,M] bool, video_index [P], image_index [P] -> [P].

        Pair i is (image image_index[i], video video_index[i]); an index left
        None means row i of that side. The decoder's video side runs once per
        video and (without a per-pair dropout draw, e.g. in eval mode) its
        image side once per image; the pairs are then decoded
        `pmd_chunk_size` at a time (memory grows with the chunk as H·N·M).
        """
        if self.cross is None:
            raise RuntimeError("score_pairs needs the PMD head (sim_header='cross_attention')")
        device = image_tokens.device
        pairs = len(next((i for i in (video_index, image_index) if i is not None), image_tokens))
        pair_image = image_index if image_index is not None else torch.arange(pairs, device=device)
        pair_video = video_index if video_index is not None else torch.arange(pairs, device=device)
        keys, per_pair = self.cross.video_side(video_tokens), self._image_side_per_pair()
        queries = image_tokens if per_pair else self.cross.image_side(image_tokens)
        chunk, scores = self.pmd_chunk_size(device), []
        for start in range(0, pairs, chunk):
            part = slice(start, start + chunk)
            pooled, _ = self._decode(queries, keys, video_token_mask, pair_video[part], pair_image[part], per_pair)
            scores.append(pair_scores(pooled, self.similarity_dense))
        return torch.cat(scores)

    def _decode(self, queries, keys, token_mask, pair_video, pair_image, per_pair: bool):
        """Decode pairs (image pair_image[i], video pair_video[i]); `queries` are image tokens when
        `per_pair` (each pair runs the image side itself), else the image side's output per image."""
        if per_pair:
            return self.cross.decode(self.cross.image_side(queries.index_select(0, pair_image)), keys, token_mask,
                                     pair_video)
        return self.cross.decode(queries, keys, token_mask, pair_video, pair_image)

    # ---------------------------------------------------------------- training
    def forward(self, images: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                frame_index: torch.Tensor | None = None) -> dict:
        """One training step's losses for B local pairs (images [B,3,H,W], frames [B,T,3,H,W], mask [B,T]).

        The mask and `frame_index` as in `encode_pairs`.
        """
        return self.pair_losses(self.encode_pairs(images, frames, frame_mask, frame_index))

    def encode_pairs(self, images: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                     frame_index: torch.Tensor | None = None) -> dict:
        """The features the losses need, from one encoder pass over the images and the valid frames.

        Returns {"image_emb" [B,E], "video_emb" [B,E] (L2-normalised), and with
        PMD "image_tokens" [B,N,E], "video_tokens" [B,T*N,E], "token_mask"
        [B,T*N] bool}. Padded frames are never encoded.

        `frame_mask` may stay on the host: the valid frames are then found
        there and their positions copied to the device once. A caller that
        has already moved the mask to the device (e.g. through
        DistributedDataParallel) passes `frame_index`, the mask's
        `valid_frames` found on the host and moved alike; without it a device
        mask costs one device wait.
        """
        size = self.config.vision.image_size
        _check_images(images, size)
        _check_frames(frames, frame_mask, size)
        if frames.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {frames.shape[0]} videos; pairs must align")
        b, want_tokens = images.shape[0], self.cross is not None
        index, mask = _frame_plan(frame_mask, frame_index, frames.device)
        emb, tok = self.visual(torch.cat([images, frames.flatten(0, 1)[index]]), want_tokens)
        features = {"image_emb": nn.functional.normalize(emb[:b], dim=-1)}
        video_emb, video_tokens, token_mask = self._video_outputs(
            emb[b:], tok[b:] if want_tokens else None, index, mask
        )
        features["video_emb"] = video_emb
        if want_tokens:
            features.update(image_tokens=tok[:b], video_tokens=video_tokens, token_mask=token_mask)
        return features

    def pair_losses(self, features: dict) -> dict:
        """The named losses of B local pairs from `encode_pairs`' features (against the global batch)."""
        image_emb, video_emb = features["image_emb"], features["video_emb"]
        b, device = image_emb.shape[0], image_emb.device
        offset = get_rank() * b  # global index of the first local pair
        all_video_emb = all_gather_with_grad(video_emb)
        icl = contrastive_loss(
            image_emb, video_emb, all_gather_with_grad(image_emb), all_video_emb, offset, self.config.logit_scale
        )
        losses = {"icl": icl}
        total = icl
        if self.cross is not None:
            image_tokens = features["image_tokens"]
            with torch.autocast(device_type=device.type, enabled=False):
                similarity = at_least_fp32(image_emb.detach()) @ at_least_fp32(all_video_emb.detach()).T  # [B, G]
            positives = torch.arange(b, device=device) + offset
            candidates = hard_negative_candidates(similarity, positives, self.config.num_hard_negatives)
            scores, pfr_sum = self._score_candidates(
                image_tokens, all_gather_with_grad(features["video_tokens"]), all_gather(features["token_mask"]),
                candidates
            )
            losses["pmd"] = matching_loss(scores, self.config.logit_scale)
            total = total + self.config.pmd_weight * losses["pmd"]
            if self.recons_weights is not None:
                n, e = image_tokens.shape[1:]
                losses["pfr"] = pfr_sum / (b * (n - 1) * e)  # mean squared error over the positives
                total = total + self.config.pfr_weight * losses["pfr"]
        losses["loss"] = total
        return losses

    def _score_candidates(self, image_tokens, all_video_tokens, all_token_mask, candidates):
        """PMD scores [B, C] of each local image with its C candidate videos, in chunks of pairs.

        Also returns the PFR squared error summed over the positive pairs
        (column 0), computed from the same decoder pass.

        The plan has fixed shapes and stays on the device: the decoder's video
        side runs once per gathered video, its image side once per local
        image (or, with a per-pair dropout draw, the v1 default in training,
        once per pair inside the chunks), and chunk k decodes pairs
        [k·S, (k+1)·S) of the B·C pairs (image p // C, video
        candidates.flatten()[p]), gathered by index. With gradient
        checkpointing each part is recomputed in the backward pass, so only
        one chunk's pair activations are alive at a time.
        """
        b, c = candidates.shape
        device = image_tokens.device
        per_pair = self._image_side_per_pair()
        queries = image_tokens if per_pair else self._maybe_checkpoint(self.cross.image_side, image_tokens)
        keys = self._maybe_checkpoint(self.cross.video_side, all_video_tokens)  # 2 x [G, H, M, Dh]
        pair_image = torch.arange(b * c, device=device) // c  # [B*C]
        pair_video = candidates.reshape(-1)  # [B*C]
        chunk = self.pmd_chunk_size(device)
        scores, pfr_sum = [], 0.0
        for start in range(0, b * c, chunk):
            part = slice(start, start + chunk)
            first_positive = -start % c  # row of the chunk's first positive pair (column 0)
            s, err = self._maybe_checkpoint(self._score_chunk, queries, *keys, all_token_mask, pair_video[part],
                                            pair_image[part], image_tokens, all_video_tokens, first_positive, c,
                                            per_pair)
            scores.append(s)
            pfr_sum = pfr_sum + err
        return torch.cat(scores).view(b, c), pfr_sum

    def _maybe_checkpoint(self, fn, *args):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _score_chunk(self, queries, keys, values, token_mask, pair_video, pair_image, image_tokens, video_tokens,
                     first_positive, c, per_pair):
        """Scores of one chunk of pairs (image pair_image[i], video pair_video[i]) and their PFR error.

        Every c-th pair from row `first_positive` on is a positive pair; its
        PFR error counts. Those rows are a strided slice, known on the host.
        """
        pooled, attention = self._decode(queries, (keys, values), token_mask, pair_video, pair_image, per_pair)
        scores = pair_scores(pooled, self.similarity_dense)
        if self.recons_weights is None or first_positive >= len(pair_video):
            return scores, scores.new_zeros(())
        rows = slice(first_positive, None, c)
        # PFR on the positive pairs: CLS rows/columns dropped, padded frames zeroed.
        n, e = image_tokens.shape[1:]
        with torch.autocast(device_type=scores.device.type, enabled=False):
            weights = self.recons_weights(drop_cls(attention[rows], n))  # [P+, N-1, T*(N-1)]
        p = weights.shape[0]
        positive_video = pair_video[rows]
        video = video_tokens.index_select(0, positive_video).view(p, -1, n, e)[:, :, 1:]  # [P+, T, N-1, E]
        frame_valid = token_mask.index_select(0, positive_video).view(p, -1, n)[:, :, 1:, None]
        video = (video * frame_valid).reshape(p, -1, e)
        return scores, reconstruction_error(weights, video, image_tokens.index_select(0, pair_image[rows])[:, 1:])


def _frame_plan(frame_mask: torch.Tensor, frame_index: torch.Tensor | None, device: torch.device):
    """(flat positions [F] of the valid frames, the mask [B, T]), both on `device`, with no device wait.

    From a host mask: positions found on the host and copied once; the device
    mask is rebuilt from them on the device. From a device mask: `frame_index`
    when given (found on the host by the caller), else found on the device
    (one wait).
    """
    if frame_index is None:
        frame_index = valid_frames(frame_mask)
    index = to_device(frame_index, device)
    if frame_mask.device == device:
        return index, frame_mask
    mask = torch.zeros(frame_mask.numel(), dtype=torch.bool, device=device).index_fill_(0, index, True)
    return index, mask.view(frame_mask.shape)


def _check_images(images: torch.Tensor, size: int) -> None:
    if images.dim() != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(f"images must be [B, 3, {size}, {size}], got {tuple(images.shape)}")


def _check_frames(frames: torch.Tensor, frame_mask: torch.Tensor, size: int) -> None:
    if frames.dim() != 5 or frames.shape[2:] != (3, size, size):
        raise ValueError(f"frames must be [B, T, 3, {size}, {size}], got {tuple(frames.shape)}")
    if frame_mask.dtype != torch.bool or frame_mask.shape != frames.shape[:2]:
        raise ValueError(
            f"frame_mask must be a bool tensor of shape {tuple(frames.shape[:2])} (True = real frame), "
            f"got {frame_mask.dtype} {tuple(frame_mask.shape)}"
        )
