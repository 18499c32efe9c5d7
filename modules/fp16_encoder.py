"""The v1 release's fp16 encoder weights (recipe `v1_release`, docs/recipes.md).

The v1 release converted OpenAI's CLIP to half precision before training
(the `convert_weights` rule of OpenAI's CLIP code) and trained those fp16
tensors directly. The rule, reproduced here for the vision tower:

- fp16: the weights and biases of every convolution and linear layer
  (`conv1`, each block's `attn.in_proj_*`, `attn.out_proj`, `mlp.c_fc`,
  `mlp.c_proj`) and the projection `proj`;
- fp32: the LayerNorms (`ln_pre`, `ln_1`, `ln_2`, `ln_post`),
  `class_embedding` and `positional_embedding`.

The encoder then runs in fp16 (pixels are cast to fp16 before the patch
embedding, the embeddings are added in fp16), each LayerNorm computes in
fp32 and hands fp16 back, and the outputs are cast to fp32 for the heads
and losses, as v1 did (`.float()` on the visual outputs). This is not
autocast: the weights themselves are fp16, and the optimizer updates them in
fp16 (utils/train/bert_adam.py).

`convert_encoder_to_fp16` changes the classes of the modules in place, so
parameter names, and therefore checkpoints, stay the same.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.clip_vit import SelfAttention, VisionTransformer, normalize_pixels


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm with fp32 weights that computes in fp32 and returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class Fp16VisionTransformer(VisionTransformer):
    """The CLIP vision tower with fp16 weights: fp16 inside, fp32 outputs."""

    def forward(self, images: torch.Tensor, return_tokens: bool = False):
        if images.dtype == torch.uint8:
            images = normalize_pixels(images)
        emb, tokens = super().forward(images.to(self.conv1.weight.dtype), return_tokens)
        return emb.float(), None if tokens is None else tokens.float()


def convert_encoder_to_fp16(visual: VisionTransformer) -> VisionTransformer:
    """Apply the v1 conversion to `visual` in place (see the module docstring); returns it."""
    with torch.no_grad():
        for module in visual.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.data = module.weight.data.half()
                if module.bias is not None:
                    module.bias.data = module.bias.data.half()
            elif isinstance(module, SelfAttention):
                module.in_proj_weight.data = module.in_proj_weight.data.half()
                module.in_proj_bias.data = module.in_proj_bias.data.half()
            if isinstance(module, nn.LayerNorm):
                module.__class__ = Fp32LayerNorm
        visual.proj.data = visual.proj.data.half()
    visual.__class__ = Fp16VisionTransformer
    return visual


def is_fp16_encoder(visual: nn.Module) -> bool:
    return isinstance(visual, Fp16VisionTransformer)
