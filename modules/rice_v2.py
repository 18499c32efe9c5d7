"""The RICE model with the v2 release's heads and losses (recipe `v2_release`, docs/recipes.md).

Same encoder and embeddings as `RICEModel` (the v2 video rule: masked mean of
the frame embeddings, then normalise); the heads differ (modules/heads_v2.py):

    vic = ½ [CE(s²·cos(image, videos)) + CE(s²·cos(video, images))]   s = `logit_scale`, 4 at the start
    vim = CE over (positive, 3 hardest videos of the global batch) of 10·cos(pooled, w), target the positive
    rec = mean over positives, patches, channels of (softmax_keys(rec(maps)) · sg(X_video) − sg(X_image))²
    loss = vic + vim + rec

The decoder and PFR read the encoder's tokens before `ln_post` (CLS
included, padded frames zero and masked); `rec` runs its own decoder pass on
the positive pairs. Losses are computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.config import RICEConfig
from modules.heads_v2 import V2Decoder, v2_reconstruction_head, v2_scores
from modules.losses import at_least_fp32, contrastive_loss, hard_negative_candidates, matching_loss
from modules.rice import RICEModel, _check_frames, _check_images, _frame_plan
from utils.runtime.distributed import all_gather, all_gather_with_grad, get_rank

V2_LOGIT_SCALE_INIT = 4.0


class RICEv2Model(RICEModel):
    def __init__(self, config: RICEConfig):
        nn.Module.__init__(self)
        self.config = config
        self.visual = _visual(config)
        self.logit_scale = nn.Parameter(torch.tensor(V2_LOGIT_SCALE_INIT))
        self.decoder = self.vim = self.rec = None
        if config.use_pmd:
            width = config.vision.width
            self.decoder = V2Decoder(width, config.pmd_heads, _depth(config))
            self.vim = nn.Linear(width, 1, bias=False)  # PyTorch's default init, as v2
        if config.recons_feat:
            self.rec = v2_reconstruction_head(_depth(config) * config.pmd_heads)
        self.grad_checkpointing = False

    @property
    def cross(self):  # the evaluation asks for a PMD head by this name
        return self.decoder

    def init_from_clip(self, ckpt) -> None:
        """Load the encoder; the decoder as v2 did: from the encoder's LAST blocks."""
        self.visual.load_state_dict(ckpt.visual_state, strict=True)
        self.init_decoder()

    def init_decoder(self) -> None:
        if self.decoder is not None:
            self.decoder.init_v2(self.visual.transformer.resblocks)

    # ---------------------------------------------------------------- encoding
    def _encode(self, images: torch.Tensor, want_tokens: bool):
        """(projected CLS embedding [B, D], tokens before ln_post [B, N, E] or None)."""
        v = self.visual
        if images.dtype == torch.uint8:
            from modules.clip_vit import normalize_pixels

            images = normalize_pixels(images)
        x = v.embed_patches(images)
        x = torch.cat([v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = v.transformer(v.ln_pre(x + v.positional_embedding.to(x.dtype)))
        return v.ln_post(x[:, 0]) @ v.proj, (x if want_tokens else None)

    def encode_images(self, images, return_tokens: bool = False):
        _check_images(images, self.config.vision.image_size)
        emb, tokens = self._encode(images, return_tokens)
        return F.normalize(emb, dim=-1), tokens

    def encode_videos(self, frames, frame_mask, return_tokens: bool = False, frame_index=None):
        _check_frames(frames, frame_mask, self.config.vision.image_size)
        index, mask = _frame_plan(frame_mask, frame_index, frames.device)
        emb, tokens = self._encode(frames.flatten(0, 1)[index], return_tokens)
        return self._video_outputs(emb, tokens, index, mask)

    def encode_pairs(self, images, frames, frame_mask, frame_index=None) -> dict:
        size = self.config.vision.image_size
        _check_images(images, size)
        _check_frames(frames, frame_mask, size)
        b, want = images.shape[0], self.decoder is not None
        index, mask = _frame_plan(frame_mask, frame_index, frames.device)
        emb, tok = self._encode(torch.cat([images, frames.flatten(0, 1)[index]]), want)
        features = {"image_emb": F.normalize(emb[:b], dim=-1)}
        video_emb, video_tokens, token_mask = self._video_outputs(emb[b:], tok[b:] if want else None, index, mask)
        features["video_emb"] = video_emb
        if want:
            features.update(image_tokens=tok[:b], video_tokens=video_tokens, token_mask=token_mask)
        return features

    # ---------------------------------------------------------------- scoring and losses
    def score_pairs(self, image_tokens, video_tokens, video_token_mask, video_index=None,
                    image_index=None) -> torch.Tensor:
        """v2's pair score 10·cos(pooled, w) [P] (the re-ranking score); pairs as in `RICEModel.score_pairs`,
        decoded `pmd_chunk_size` at a time."""
        if self.decoder is None:
            raise RuntimeError("score_pairs needs the v2 PMD head (sim_header='cross_attention')")
        if image_index is None and video_index is None:
            pooled, _ = self.decoder(image_tokens, video_tokens, video_token_mask)
            return v2_scores(pooled, self.vim.weight)
        device = image_tokens.device
        pairs = len(image_index if image_index is not None else video_index)
        pair_image = image_index if image_index is not None else torch.arange(pairs, device=device)
        pair_video = video_index if video_index is not None else torch.arange(pairs, device=device)
        chunk, scores = self.pmd_chunk_size(device), []
        for start in range(0, pairs, chunk):
            part = slice(start, start + chunk)
            pooled, _ = self.decoder(image_tokens[pair_image[part]], video_tokens, video_token_mask, pair_video[part])
            scores.append(v2_scores(pooled, self.vim.weight))
        return torch.cat(scores)

    def pair_losses(self, features: dict) -> dict:
        image_emb, video_emb = features["image_emb"], features["video_emb"]
        b, device = image_emb.shape[0], image_emb.device
        offset = get_rank() * b
        all_video_emb = all_gather_with_grad(video_emb)
        scale = at_least_fp32(self.logit_scale)
        vic = contrastive_loss(image_emb, video_emb, all_gather_with_grad(image_emb), all_video_emb, offset,
                               scale * scale)
        losses, total = {"icl": vic}, vic
        if self.decoder is not None:
            with torch.autocast(device_type=device.type, enabled=False):
                similarity = at_least_fp32(image_emb.detach()) @ at_least_fp32(all_video_emb.detach()).T
            positives = torch.arange(b, device=device) + offset
            candidates = hard_negative_candidates(similarity, positives, self.config.num_hard_negatives)
            all_tokens = all_gather_with_grad(features["video_tokens"])
            all_mask = all_gather(features["token_mask"])
            c = candidates.shape[1]
            image_index = torch.arange(b, device=device).repeat_interleave(c)
            scores = self.score_pairs(features["image_tokens"].index_select(0, image_index), all_tokens, all_mask,
                                      candidates.reshape(-1)).view(b, c)
            losses["pmd"] = matching_loss(scores, 1.0)
            total = total + losses["pmd"]
            if self.rec is not None:
                losses["pfr"] = self._reconstruction(features)
                total = total + losses["pfr"]
        losses["loss"] = total
        return losses

    def _reconstruction(self, features: dict) -> torch.Tensor:
        """v2's PFR on the local positive pairs, from a decoder pass of its own."""
        image_tokens, video_tokens, mask = features["image_tokens"], features["video_tokens"], features["token_mask"]
        _, maps = self.decoder(image_tokens, video_tokens, mask)
        with torch.autocast(device_type=maps.device.type, enabled=False):
            weights = self.rec(at_least_fp32(maps)).squeeze(1).softmax(dim=-1)  # [B, N, M]
            video = at_least_fp32(video_tokens.detach()) * mask[..., None]
            return F.mse_loss(weights @ video, at_least_fp32(image_tokens.detach()))


def _visual(config: RICEConfig):
    from modules.clip_vit import VisionTransformer

    return VisionTransformer(config.vision)


def _depth(config: RICEConfig) -> int:
    """v2's depth unit is a (self, cross) pair; its setting 1 is `cross_num_hidden_layers` 2 here."""
    return max(config.cross_num_hidden_layers // 2, 1)
