"""Procedural "products" and cluttered livestream scenes for the synthetic datasets.

A product is a silhouette of its category (shirt, bag, bottle, ...) filled with a colour and a
texture (stripes, dots, checks), with an accent colour and text-like marks. Products of one
category in one shop share their silhouette and a colour family, so they differ in detail only.
A shop image is the product alone on a light background; a frame shows it at some scale,
position and rotation on a cluttered background, under a colour cast, sometimes partly occluded
and sometimes next to another product.
"""
import colorsys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ["tshirt", "handbag", "bottle", "sneaker", "hat", "phone_case"]


@dataclass
class Product:
    category: int
    body: tuple[int, int, int]
    accent: tuple[int, int, int]
    pattern: str                 # "plain" | "hstripes" | "dstripes" | "dots" | "checks"
    spacing: float               # pattern period, fraction of the product size
    marks: list = field(default_factory=list)   # [(x, y, w, rows)] text-like blocks, fractions


def _hsv(h, s, v):
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def random_product(rng: np.random.Generator, category: int, base_hue: float) -> Product:
    """A product of `category` whose colour stays near `base_hue` (its shop's colour family)."""
    hue = base_hue + rng.uniform(-0.12, 0.12)
    body = _hsv(hue, rng.uniform(0.45, 0.95), rng.uniform(0.45, 0.95))
    accent = _hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
    pattern = str(rng.choice(["plain", "hstripes", "dstripes", "dots", "checks"]))
    marks = [(rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.65), rng.uniform(0.15, 0.35), int(rng.integers(1, 4)))
             for _ in range(int(rng.integers(0, 3)))]
    return Product(category, body, accent, pattern, float(rng.uniform(0.1, 0.25)), marks)


def _silhouette(category: int, s: int) -> Image.Image:
    """Mask (mode L, s x s) of the category's shape."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    p = lambda *xy: [(x * s, y * s) for x, y in zip(xy[::2], xy[1::2])]  # noqa: E731
    if category == 0:    # t-shirt
        d.polygon(p(.3, .1, .42, .16, .58, .16, .7, .1, .95, .3, .82, .42, .75, .36, .75, .92, .25, .92,
                    .25, .36, .18, .42, .05, .3), fill=255)
    elif category == 1:  # handbag
        d.rounded_rectangle(p(.12, .35, .88, .9), radius=s * .08, fill=255)
        d.arc(p(.3, .08, .7, .55), 180, 360, fill=255, width=max(2, s // 16))
    elif category == 2:  # bottle
        d.rounded_rectangle(p(.3, .35, .7, .95), radius=s * .1, fill=255)
        d.polygon(p(.3, .4, .42, .22, .58, .22, .7, .4), fill=255)
        d.rectangle(p(.42, .05, .58, .24), fill=255)
    elif category == 3:  # sneaker
        d.polygon(p(.05, .55, .35, .4, .5, .5, .9, .62, .95, .8, .05, .8), fill=255)
        d.rectangle(p(.05, .78, .95, .88), fill=255)
    elif category == 4:  # hat
        d.ellipse(p(.25, .2, .75, .75), fill=255)
        d.ellipse(p(.05, .55, .95, .8), fill=255)
    else:                # phone case
        d.rounded_rectangle(p(.28, .05, .72, .95), radius=s * .08, fill=255)
    return m


def render_product(product: Product, s: int) -> Image.Image:
    """The product as an RGBA image s x s (transparent outside its silhouette)."""
    tex = Image.new("RGB", (s, s), product.body)
    d = ImageDraw.Draw(tex)
    step = max(3, int(product.spacing * s))
    w = max(1, step // 3)
    if product.pattern == "hstripes":
        for y in range(0, s, step):
            d.rectangle([0, y, s, y + w], fill=product.accent)
    elif product.pattern == "dstripes":
        for x in range(-s, s, step):
            d.line([(x, s), (x + s, 0)], fill=product.accent, width=w)
    elif product.pattern == "dots":
        for y in range(step // 2, s, step):
            for x in range(step // 2, s, step):
                d.ellipse([x - w, y - w, x + w, y + w], fill=product.accent)
    elif product.pattern == "checks":
        for y in range(0, s, step):
            for x in range((y // step) % 2 * step, s, 2 * step):
                d.rectangle([x, y, x + step - 1, y + step - 1], fill=product.accent)
    ink = tuple(255 - c for c in product.body)
    for mx, my, mw, rows in product.marks:   # text-like marks: rows of short bars
        for r in range(rows):
            y = (my + r * 0.07) * s
            x = mx * s
            while x < (mx + mw) * s:
                bar = max(2, s // 28)
                d.rectangle([x, y, x + bar, y + max(1, s // 40)], fill=ink)
                x += bar + max(1, s // 50)
    mask = _silhouette(product.category, s)
    out = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    out.paste(tex, (0, 0), mask)
    return out


def shop_image(product: Product, size: int, rng: np.random.Generator) -> Image.Image:
    """A clean product shot: the product centred on a light background."""
    shade = int(rng.integers(225, 256))
    img = Image.new("RGB", (size, size), (shade, shade, shade))
    s = int(size * 0.85)
    img.paste(r := render_product(product, s), ((size - s) // 2, (size - s) // 2), r)
    return img


def background(rng: np.random.Generator, size: int, hue: float) -> Image.Image:
    """A cluttered room: a base colour near `hue` plus random shapes."""
    img = Image.new("RGB", (size, size), _hsv(hue, rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.9)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.4, 2) * size
        colour = _hsv(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.1, 1))
        [d.rectangle, d.ellipse][int(rng.integers(0, 2))]([x0, y0, x0 + w, y0 + h], fill=colour)
    return img


@dataclass
class Shot:
    """Where the product is in a frame (fractions of the frame size, degrees)."""
    cx: float
    cy: float
    scale: float
    angle: float
    light: tuple[float, float, float]
    occlusion: tuple | None      # (x0, y0, x1, y1, rgb) in fractions, or None
    companion: tuple | None      # (product index, cx, cy, scale) of a second product, or None


def random_shot(rng: np.random.Generator, n_companions: int) -> Shot:
    occ = None
    if rng.random() < 0.3:
        x0, y0 = rng.uniform(0.2, 0.7, 2)
        occ = (x0, y0, x0 + rng.uniform(0.1, 0.3), y0 + rng.uniform(0.1, 0.3),
               _hsv(rng.random(), 0.3, rng.uniform(0.3, 0.9)))
    comp = None
    if n_companions and rng.random() < 0.25:
        comp = (int(rng.integers(0, n_companions)), float(rng.uniform(0.15, 0.85)),
                float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.25, 0.4)))
    return Shot(float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.5, 0.9)),
                float(rng.uniform(-30, 30)), tuple(rng.uniform(0.7, 1.3, 3)), occ, comp)


def jitter(shot: Shot, rng: np.random.Generator) -> Shot:
    """The next frame of a clip: the product moves a little, the rest stays."""
    return Shot(shot.cx + rng.uniform(-0.04, 0.04), shot.cy + rng.uniform(-0.04, 0.04),
                shot.scale * rng.uniform(0.92, 1.08), shot.angle + rng.uniform(-6, 6),
                shot.light, shot.occlusion, shot.companion)


def _paste(canvas: Image.Image, product: Product, cx, cy, scale, angle, cache: dict) -> list[int]:
    size = canvas.size[0]
    s = max(8, int(size * scale))
    if id(product) not in cache:   # draw once per clip at full frame size, then only resize
        cache[id(product)] = render_product(product, size)
    sprite = cache[id(product)].resize((s, s), Image.BILINEAR).rotate(angle, resample=Image.BILINEAR, expand=True)
    x, y = int(cx * size - sprite.size[0] / 2), int(cy * size - sprite.size[1] / 2)
    canvas.paste(sprite, (x, y), sprite)
    return [max(0, x), max(0, y), min(size, x + sprite.size[0]), min(size, y + sprite.size[1])]


def render_frame(product: Product, shot: Shot, bg: Image.Image, companions: list[Product],
                 cache: dict) -> tuple[Image.Image, list[int]]:
    """One video frame and the product's box [x1, y1, x2, y2] in pixels.

    `cache` keeps the drawn sprites of one clip (pass the same dict for all its frames).
    """
    img = bg.copy()
    if shot.companion is not None:
        idx, cx, cy, sc = shot.companion
        _paste(img, companions[idx], cx, cy, sc, 0.0, cache)
    box = _paste(img, product, shot.cx, shot.cy, shot.scale, shot.angle, cache)
    if shot.occlusion is not None:
        size = img.size[0]
        x0, y0, x1, y1, rgb = shot.occlusion
        ImageDraw.Draw(img).ellipse([x0 * size, y0 * size, x1 * size, y1 * size], fill=rgb)
    arr = np.asarray(img, dtype=np.float32) * np.asarray(shot.light, dtype=np.float32)  # colour cast
    contrast = 0.8 + 0.4 * shot.light[0] / 1.3
    arr = (arr - arr.mean()) * contrast + arr.mean()
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), box
