"""Image decoding and the v1 / v2 preprocessing (docs/evaluation.md; docs/training.md), at the model's resolution.

  v1 (train and eval): resize to exactly S x S, bicubic (aspect ratio NOT kept), centre crop S.
  v2 eval:  resize to R x R with R = int(S * 256 / 224), bilinear, centre crop S.
  v2 train: resize to R x R, random crop S, random horizontal flip.
The output is uint8 [3, S, S]: the CLIP mean/std normalisation runs in the model, on its device
(modules/clip_vit.py `normalize_pixels`), so batches cross processes and the host-to-device
copy at a quarter of float32's size. Random choices come from a numpy Generator passed
by the caller, so a sample's augmentation depends only on its seed (not on workers or on the
global torch RNG).

Decoding (`--decode`, docs/data.md#decoding): "exact" (the default) decodes the whole file with
PIL and resizes with PIL, as the releases do; "draft" lets PIL decode large JPEGs at a reduced DCT
scale; "tv" decodes with torchvision (libjpeg-turbo; other formats through PIL) and resizes the
uint8 tensor with torchvision's antialiased kernels (within 1 grey level of PIL's resize and
several times faster than it). The random crop and flip draw the same numbers in every mode.
"""
import io
import warnings

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

DECODE_CHOICES = ("exact", "draft", "tv")


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
        img.load()  # the full (possibly reduced) decode
        return img if img.mode == "RGB" else img.convert("RGB")  # no copy when already RGB


def load_uint8(path: str | bytes) -> torch.Tensor:
    """Decode an image file to a uint8 tensor [3, H, W] for the "tv" mode.

    JPEGs (RGB or grey) are decoded by torchvision's libjpeg-turbo, everything else by PIL.
    PIL reads the header first, so its pixel limit (decompression bombs) holds here too.
    Raises OSError/ValueError on an unreadable file, as `load_rgb` does.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if isinstance(path, bytes):  # a file's bytes (a shard member)
        data, path = path, "image bytes"
    else:
        with open(path, "rb") as f:
            data = f.read()
    with Image.open(io.BytesIO(data)) as img:  # header only, unless we decode with PIL below
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            img.load()
            return to_uint8_tensor(img if img.mode == "RGB" else img.convert("RGB"))
    try:
        with warnings.catch_warnings():  # torchvision 0.29 marks its image decoders deprecated (pinned here)
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as err:  # truncated or corrupt: the same kind of error as PIL's
        raise OSError(f"{path}: {str(err).splitlines()[-1][:200]}") from None


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image [H,W,3] -> uint8 tensor [3,H,W]. The model normalises it (modules/clip_vit.py)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


class ImageTransform:
    """PIL image (or, for "tv", a uint8 tensor [3,H,W]) -> uint8 tensor [3, S, S].

    See the module docstring for the styles and the decode modes; `read(path, rng)` decodes a file
    the way `decode` says and transforms it.
    """

    def __init__(self, style: str, train: bool, image_size: int, fast_decode: bool = False,
                 decode: str | None = None):
        if style not in ("v1", "v2"):
            raise ValueError(f"unknown transform style {style!r}; use 'v1' or 'v2'")
        decode = decode or ("draft" if fast_decode else "exact")
        if decode not in DECODE_CHOICES:
            raise ValueError(f"unknown decode mode {decode!r}; use one of {DECODE_CHOICES}")
        self.decode = decode
        self.style, self.train, self.image_size = style, train, image_size
        if style == "v1":
            self.resize_size, self.interpolation = image_size, TF.InterpolationMode.BICUBIC
        else:
            self.resize_size, self.interpolation = int(image_size * 256 / 224), TF.InterpolationMode.BILINEAR
        # Draft-mode JPEG decoding only when asked for (not exact): the smallest side it may reduce to.
        self.fast_decode = decode == "draft"
        self.decode_size = self.resize_size if self.fast_decode else None

    def read(self, path: str | bytes, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Decode the file at `path` (or a file's bytes) as `self.decode` says, then transform it.
        Raises OSError/ValueError on an unreadable file (callers decide what to skip)."""
        if self.decode == "tv":
            return self(load_uint8(path), rng)
        source = io.BytesIO(path) if isinstance(path, bytes) else path
        return self(load_rgb(source, self.decode_size), rng)

    def __call__(self, img: Image.Image | torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        s, r = self.image_size, self.resize_size
        if self.decode == "tv":
            img = _resize_uint8(img if isinstance(img, torch.Tensor) else to_uint8_tensor(img), r, self.interpolation)
        else:
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
        return img.contiguous() if isinstance(img, torch.Tensor) else to_uint8_tensor(img)

    def __repr__(self):
        return (f"ImageTransform(style={self.style!r}, train={self.train}, image_size={self.image_size}, "
                f"decode={self.decode!r})")


def _resize_uint8(img: torch.Tensor, size: int, interpolation: TF.InterpolationMode) -> torch.Tensor:
    """uint8 [3,H,W] -> uint8 [3,size,size] with torchvision's antialiased kernel (the "tv" mode)."""
    import torchvision.transforms.v2.functional as F2

    return F2.resize(img, [size, size], interpolation=interpolation, antialias=True)


def build_transform(style: str, train: bool, image_size: int, fast_decode: bool = False,
                    decode: str | None = None) -> ImageTransform:
    """The preprocessing of a release: style "v1" or "v2", train or eval, at image_size.

    `decode`: "exact" (the default: whole decode, PIL resize), "draft" or "tv" (module docstring);
    `fast_decode=True` is the older spelling of decode="draft".
    """
    return ImageTransform(style, train, image_size, fast_decode, decode)
