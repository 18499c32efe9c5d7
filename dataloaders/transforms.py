"""Image decoding and the v1 / v2 preprocessing (docs/evaluation.md; docs/training.md), at the model's resolution.

  v1 (train and eval): resize to exactly S x S, bicubic (aspect ratio NOT kept), centre crop S.
  v2 eval:  resize to R x R with R = int(S * 256 / 224), bilinear, centre crop S.
  v2 train: resize to R x R, random crop S, random horizontal flip.
The output is uint8 [3, S, S]: the CLIP mean/std normalisation runs in the model, on its device
(modules/clip_vit.py `normalize_pixels`), so batches cross processes and the host-to-device
copy at a quarter of float32's size. Random choices come from a numpy Generator passed
by the caller, so a sample's augmentation depends only on its seed (not on workers or on the
global torch RNG).
"""
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image


def load_rgb(path: str, decode_size: int | None = None) -> Image.Image:
    """Decode an image file to RGB with PIL: the whole image, as the releases do.

    With `decode_size` (the fast path, `--fast_decode`), a JPEG at least twice
    as large as decode_size on both sides is decoded in draft mode: libjpeg
    decodes at a reduced scale (1/2, 1/4, 1/8) that still keeps both sides
    >= decode_size. That is much faster than a full decode followed by a
    downscale, but it changes the pixels the resize sees (figures:
    benchmarks/bench_decode.py).
    Raises OSError/ValueError on an unreadable file (callers decide what to skip).
    """
    with Image.open(path) as img:
        if decode_size and img.format == "JPEG" and min(img.size) >= 2 * decode_size:
            img.draft("RGB", (decode_size, decode_size))
        return img.convert("RGB")  # convert() forces the full (possibly reduced) decode


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image [H,W,3] -> uint8 tensor [3,H,W]. The model normalises it (modules/clip_vit.py)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


class ImageTransform:
    """PIL image -> uint8 tensor [3, S, S]. See the module docstring for the styles."""

    def __init__(self, style: str, train: bool, image_size: int, fast_decode: bool = False):
        if style not in ("v1", "v2"):
            raise ValueError(f"unknown transform style {style!r}; use 'v1' or 'v2'")
        self.style, self.train, self.image_size = style, train, image_size
        if style == "v1":
            self.resize_size, self.interpolation = image_size, TF.InterpolationMode.BICUBIC
        else:
            self.resize_size, self.interpolation = int(image_size * 256 / 224), TF.InterpolationMode.BILINEAR
        # Draft-mode JPEG decoding only when asked for (not exact): the smallest side it may reduce to.
        self.fast_decode = fast_decode
        self.decode_size = self.resize_size if fast_decode else None

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        s, r = self.image_size, self.resize_size
        img = TF.resize(img, [r, r], interpolation=self.interpolation)
        if self.style == "v2" and self.train:
            if rng is None:
                raise ValueError("the v2 train transform needs an rng for its random crop and flip")
            top, left = int(rng.integers(0, r - s + 1)), int(rng.integers(0, r - s + 1))
            img = TF.crop(img, top, left, s, s)
            if rng.random() < 0.5:
                img = TF.hflip(img)
        else:
            img = TF.center_crop(img, [s, s])
        return to_uint8_tensor(img)

    def __repr__(self):
        return (f"ImageTransform(style={self.style!r}, train={self.train}, image_size={self.image_size}, "
                f"fast_decode={self.fast_decode})")


def build_transform(style: str, train: bool, image_size: int, fast_decode: bool = False) -> ImageTransform:
    """The preprocessing of a release: style "v1" or "v2", train or eval, at image_size.

    Images are decoded whole (exact) unless `fast_decode` allows JPEG draft mode.
    """
    return ImageTransform(style, train, image_size, fast_decode)
