"""Photo-like JPEG files for loader and decoding measurements.

Flat synthetic drawings compress to a few kB and decode unrealistically fast; the frames of a
livestream do not. `photo_like` builds an image with the ingredients that set a real frame's
decode and resize cost: smooth structure at several scales (lighting, shapes), a brightness
gradient, hard-edged regions (products, text boxes) and sensor grain. Saved at JPEG quality 90
with 4:2:0 chroma, a 455x256 frame takes about 25-30 kB, as LPR4M frames do.

    write_photo_clips("DIR", clips=8, frames=10)   # DIR/c0000/f00.jpg ..., DIR/c0000/shop.jpg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FRAME_SIZE = (455, 256)  # width, height: an LPR4M frame has a shorter side of 256 px
SHOP_SIZE = (256, 256)


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB image of width x height with smooth structure, a gradient, hard edges and grain."""
    img = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((3, 110.0), (12, 45.0), (48, 20.0)):  # coarse to fine structure
        grid = rng.integers(0, 256, (cells, max(2, cells * width // height), 3), dtype=np.uint8)
        smooth = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
        img += amplitude / 255.0 * np.asarray(smooth, np.float32)
    img += np.linspace(-25.0, 25.0, width, dtype=np.float32)[None, :, None]  # lighting gradient
    for _ in range(int(rng.integers(6, 14))):  # hard-edged regions
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, width // 2)), y0 + int(rng.integers(4, height // 2))
        img[y0:y1, x0:x1] += rng.normal(0.0, 45.0, 3).astype(np.float32)
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)  # grain
    return Image.fromarray(np.clip(img + 30.0, 0, 255).astype(np.uint8))


def write_photo_clips(folder: str | Path, clips: int, frames: int = 10, seed: int = 0,
                      frame_size: tuple[int, int] = FRAME_SIZE, shop_size: tuple[int, int] = SHOP_SIZE,
                      quality: int = 90) -> list[tuple[list[str], str]]:
    """Write `clips` clips of `frames` JPEG frames plus one shop image each.

    Returns [(frame paths, shop image path)] per clip. Every file is a function of (seed, clip).
    """
    folder = Path(folder)
    out = []
    for c in range(clips):
        rng = np.random.default_rng((seed, c))
        clip_dir = folder / f"c{c:04d}"
        clip_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for f in range(frames):
            path = clip_dir / f"f{f:02d}.jpg"
            photo_like(rng, *frame_size).save(path, quality=quality)
            paths.append(str(path))
        shop = clip_dir / "shop.jpg"
        photo_like(rng, *shop_size).save(shop, quality=quality)
        out.append((paths, str(shop)))
    return out
