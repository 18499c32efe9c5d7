"""A synthetic livestream: one long mp4 (PyAV) with a known product schedule, and its shop.

    make_synthetic_livestream("DIR", seed=0, duration_s=120)
writes
    DIR/live.mp4        the stream (H.264, yuv420p)
    DIR/shop/<id>.jpg   one clean image per product (the products of `synthetic_draw`)
    DIR/schedule.json   {"duration_s", "fps", "width", "height", "segments": [{"start_s", "end_s",
                        "image_id" (null: no product)}], "products": [ids]}

The schedule is a run of segments of random length (`segment_s`): a product
presented in a scene of its own (a cluttered room, the product moving and
turning a little between renders, sometimes occluded or next to another
shop product), or, with probability `idle_fraction`, an idle stretch with no
product. Products come back: each segment draws a product other than the
previous one, and segments outnumber products. Between segments the picture
cross-fades over `transition_s` seconds; the schedule's boundary is the
middle of the fade.

Style "card" (`style="card"`) shows the product's shop image itself, large,
moving a little over a plain room colour: the picture of a product card that
streams overlay, and a design on which even an untrained encoder finds the
product (the tests use it to check the pipeline, not the model).

Speed: a new scene picture is drawn `renders_per_s` times a second and held
in between (the encoder still codes every frame), so long or large (720p)
streams are quick to write. The scene is square (the smaller side) and
centred on a canvas of its room's colour.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .synthetic_draw import CATEGORIES, background, jitter, random_product, random_shot, render_frame, shop_image


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def make_schedule(rng: np.random.Generator, names: list[str], duration_s: float, segment_s=(8.0, 30.0),
                  idle_fraction: float = 0.2) -> list[dict]:
    """Segments covering [0, duration_s): products (no immediate repeat) and idle stretches."""
    segments, t, previous = [], 0.0, None
    while t < duration_s - 1e-9:
        length = float(rng.uniform(*segment_s))
        if duration_s - (t + length) < segment_s[0] / 2:  # no sliver at the end
            length = duration_s - t
        if previous is not None and rng.random() < idle_fraction:
            label = None
        else:
            label = str(rng.choice([n for n in names if n != previous]))
        segments.append({"start_s": round(t, 3), "end_s": round(min(t + length, duration_s), 3), "image_id": label})
        t += length
        previous = label
    return segments


class _Scene:
    """The pictures of one segment: a room, and the product (or nothing) moving in it."""

    def __init__(self, rng, product, companions, size: int, card: Image.Image | None = None):
        self.rng, self.product, self.companions, self.card = rng, product, companions, card
        self.bg = background(rng, size, float(rng.random()))
        if card is not None:
            self.bg = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        self.shot = random_shot(rng, len(companions)) if product is not None else None
        self.light = tuple(rng.uniform(0.8, 1.2, 3))
        self.cache: dict = {}

    def render(self) -> Image.Image:
        if self.product is None:
            arr = np.asarray(self.bg, np.float32) * np.asarray(self.light, np.float32)
            return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if self.card is not None:
            size = self.bg.size[0]
            side = int(size * self.rng.uniform(0.9, 1.0))
            img = self.bg.copy()
            x, y = (int(v) for v in self.rng.integers(0, size - side + 1, 2))
            img.paste(self.card.resize((side, side), Image.BILINEAR), (x, y))
            return img
        img, _ = render_frame(self.product, self.shot, self.bg, self.companions, self.cache)
        self.shot = jitter(self.shot, self.rng)
        return img


def _canvas(scene: Image.Image, width: int, height: int) -> np.ndarray:
    if scene.size == (width, height):
        return np.asarray(scene)
    fill = np.asarray(scene).reshape(-1, 3).mean(axis=0).astype(np.uint8)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = fill
    s = scene.size[0]
    top, left = (height - s) // 2, (width - s) // 2
    out[top:top + s, left:left + s] = np.asarray(scene)
    return out


def make_synthetic_livestream(output_dir, seed: int = 0, duration_s: float = 120.0, num_products: int = 6,
                              fps: int = 5, width: int = 96, height: int = 96, segment_s=(8.0, 30.0),
                              idle_fraction: float = 0.2, transition_s: float = 0.5, renders_per_s: float = 2.0,
                              image_size: int = 96, categories: int = 3, style: str = "scene") -> dict:
    """Write the stream, its shop and its schedule (module docstring); returns their paths."""
    if style not in ("scene", "card"):
        raise ValueError(f"style must be 'scene' or 'card', got {style!r}")
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
    rng = np.random.default_rng([seed, 7])
    out = Path(output_dir)
    (out / "shop").mkdir(parents=True, exist_ok=True)
    cats = rng.choice(len(CATEGORIES), size=min(categories, len(CATEGORIES)), replace=False)
    hues = {int(c): float(rng.random()) for c in cats}
    products = [random_product(rng, int(cats[i % len(cats)]), hues[int(cats[i % len(cats)])])
                for i in range(num_products)]
    names = [_uuid(rng) for _ in products]
    cards = {}
    for name, product in zip(names, products):
        cards[name] = shop_image(product, image_size, rng)
        cards[name].save(out / "shop" / f"{name}.jpg", quality=92)
    schedule = make_schedule(rng, names, duration_s, segment_s, idle_fraction)
    by_name = dict(zip(names, products))
    size = min(width, height)
    scenes = []
    for seg in schedule:
        product = by_name.get(seg["image_id"])
        companions = [p for p in products if p is not product]
        card = cards.get(seg["image_id"]) if style == "card" else None
        scenes.append(_Scene(rng, product, companions, size, card))

    n_frames = int(round(duration_s * fps))
    hold = max(1, int(round(fps / renders_per_s)))
    ends = np.array([s["end_s"] for s in schedule])
    half_fade = transition_s / 2
    with av.open(str(out / "live.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        current: dict[int, np.ndarray] = {}
        for k in range(n_frames):
            t = (k + 0.5) / fps
            i = min(int(np.searchsorted(ends, t, side="right")), len(schedule) - 1)
            if k % hold == 0 or i not in current:
                current = {i: _canvas(scenes[i].render(), width, height)}
            picture = current[i]
            # Cross-fade around each boundary: weight of the other segment's picture.
            for j, edge in ((i - 1, schedule[i]["start_s"]), (i + 1, schedule[i]["end_s"])):
                if 0 <= j < len(schedule) and abs(t - edge) < half_fade:
                    other = current.setdefault(j, _canvas(scenes[j].render(), width, height))
                    w = 0.5 - abs(t - edge) / transition_s
                    picture = (picture * (1 - w) + other * w).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = {"duration_s": n_frames / fps, "fps": fps, "width": width, "height": height, "style": style,
            "segments": schedule, "products": names}
    (out / "schedule.json").write_text(json.dumps(info, indent=1) + "\n")
    return {"video": os.fspath(out / "live.mp4"), "shop": os.fspath(out / "shop"),
            "schedule": os.fspath(out / "schedule.json")}
