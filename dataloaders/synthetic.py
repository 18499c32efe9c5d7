"""A small synthetic dataset in the LPR750K release layout and the MovingFashion release layout.

    make_synthetic_dataset("DIR", seed=0)
writes DIR/lpr4m (docs/data.md) and DIR/movingfashion (docs/data.md, real mp4 files written by PyAV,
then the 1-fps frames and annotations/video_frames.json of `prepare_movingfashion`).

It is a real retrieval problem (see `synthetic_draw`): every livestream has its own shop of
products from a few categories, several per category differing only in colour shade, texture
and marks; queries are cluttered frames of one product. Training, validation and test use
disjoint livestreams and products. Everything is a function of the seed, including the ids:
live_id and image_id are UUIDs, clip_id = live_id-start_ms-end_ms, frame_id = clip_id-NNNN.
"""
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .movingfashion import prepare_movingfashion
from .synthetic_draw import CATEGORIES, background, jitter, random_product, random_shot, render_frame, shop_image


@dataclass
class SyntheticConfig:
    num_train_lives: int = 32
    num_val_lives: int = 2
    num_test_lives: int = 3
    products_per_shop: int = 12
    categories_per_shop: int = 3
    clips_per_product: int = 1          # training clips per product (val: 1)
    test_clips_per_product: int = 2
    min_frames: int = 3
    max_frames: int = 10                # frames per clip (test queries keep at most 10)
    image_size: int = 96                # frames and shop images are image_size x image_size
    mf_train_products: int = 24
    mf_test_products: int = 12
    mf_videos_per_product: int = 2      # training products; test products have one video
    mf_seconds: tuple[int, int] = (3, 5)
    mf_fps: int = 4


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _save(img, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)


def _make_shop(rng, cfg: SyntheticConfig):
    """Products of one livestream shop: categories_per_shop families of similar products."""
    cats = rng.choice(len(CATEGORIES), size=cfg.categories_per_shop, replace=False)
    family_hue = {int(c): float(rng.random()) for c in cats}
    products = []
    for i in range(cfg.products_per_shop):
        cat = int(cats[i % len(cats)])
        products.append(random_product(rng, cat, base_hue=family_hue[cat]))
    return products


def _clip_frames(rng, product, companions, n, size, hue):
    """n frames of one clip: one scene, the product moving a little between frames."""
    bg = background(rng, size, hue)
    shot = random_shot(rng, len(companions))
    frames, cache = [], {}
    for _ in range(n):
        frames.append(render_frame(product, shot, bg, companions, cache))
        shot = jitter(shot, rng)
    return frames


def _write_lpr(root: Path, rng, cfg: SyntheticConfig):
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    size = cfg.image_size
    rows = {"train": [], "val": []}
    queries, gts, gallery_lines = {}, {}, []
    lives = ["train"] * cfg.num_train_lives + ["val"] * cfg.num_val_lives + ["test"] * cfg.num_test_lives
    for li, split in enumerate(lives):
        live_id, hue = _uuid(rng), float(rng.random())
        shop = _make_shop(rng, cfg)
        image_ids = [_uuid(rng) for _ in shop]
        t_ms = int(rng.integers(0, 600_000))
        # In each test shop the first product is listed twice (a second image id, its own
        # shot): its queries have two ground-truth images, as some LPR4M queries do.
        duplicate_id = _uuid(rng) if split == "test" else None
        if duplicate_id:
            _save(shop_image(shop[0], size, rng), root / "gallery" / live_id / f"{duplicate_id}-0.jpg")
            gallery_lines.append(f"{live_id}/{duplicate_id}-0.jpg")
        for pi, product in enumerate(shop):
            others = shop[:pi] + shop[pi + 1:]
            if split == "test":
                _save(shop_image(product, size, rng), root / "gallery" / live_id / f"{image_ids[pi]}-0.jpg")
                _save(shop_image(product, size, rng).rotate(90), root / "gallery" / live_id / f"{image_ids[pi]}-1.jpg")
                gallery_lines.append(f"{live_id}/{image_ids[pi]}-0.jpg")
            else:
                _save(shop_image(product, size, rng), root / "training_image" / f"{image_ids[pi]}.jpg")
            n_clips = {"train": cfg.clips_per_product, "val": 1, "test": cfg.test_clips_per_product}[split]
            for _ in range(n_clips):
                hi = min(cfg.max_frames, 10) if split == "test" else cfg.max_frames
                n = int(rng.integers(min(cfg.min_frames, hi), hi + 1))
                clip_id = f"{live_id}-{t_ms}-{t_ms + 1000 * n}"
                t_ms += 1000 * n + int(rng.integers(1000, 30_000))
                frames = _clip_frames(rng, product, others, n, size, hue)
                folder = "query" if split == "test" else f"training_video_0{1 + li % 2}"
                rel, boxes = [], []
                for k, (img, box) in enumerate(frames):
                    frame_rel = f"{clip_id}/{clip_id}-{k:04d}.jpg"
                    _save(img, root / folder / frame_rel)
                    rel.append(frame_rel if split == "test" else f"{folder}/{frame_rel}")
                    boxes.append(box)
                if split == "test":
                    gt = [image_ids[pi]] + ([duplicate_id] if pi == 0 else [])
                    queries[clip_id] = {"frames": rel, "gt": gt}
                    gts[clip_id] = gt
                else:
                    cat = product.category
                    rows[split].append("\t".join([
                        clip_id, repr(rel), json.dumps(boxes), image_ids[pi], f"training_image/{image_ids[pi]}.jpg",
                        f"synthetic {CATEGORIES[cat]} {pi}", str(cat), CATEGORIES[cat], f"spu{li:03d}{pi:03d}", ""]))
    (ann / f"training_videoinfo_{len(rows['train'])}.txt").write_text("\n".join(rows["train"]) + "\n")
    (ann / "training_videoinfo_val.txt").write_text("\n".join(rows["val"]) + "\n")
    (ann / "query_tenframes.json").write_text(json.dumps(queries, indent=1))
    (ann / f"test_videoid_to_gtimage_{len(gts)}.json").write_text(json.dumps(gts, indent=1))
    (ann / "gallery_main.txt").write_text("\n".join(gallery_lines) + "\n")


def _write_mp4(path: Path, frames, fps: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "ultrafast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_movingfashion(root: Path, rng, cfg: SyntheticConfig):
    size = cfg.image_size + cfg.image_size % 2          # yuv420p needs even sides
    fashion = [0, 1, 3, 4]                              # shirt, bag, sneaker, hat
    for split, count, per in (("train", cfg.mf_train_products, cfg.mf_videos_per_product),
                              ("test", cfg.mf_test_products, 1)):
        entries = {}
        for i in range(count):
            key = f"{split}{i:05d}"
            cat = fashion[i % len(fashion)]
            product = random_product(rng, cat, base_hue=cat / 6 + 0.02 * i)
            _save(shop_image(product, size, rng), root / "imgs" / f"{key}.jpg")
            videos = []
            for v in range(per):
                n = cfg.mf_fps * int(rng.integers(cfg.mf_seconds[0], cfg.mf_seconds[1] + 1))
                companions = [random_product(rng, fashion[(i + 1) % 4], float(rng.random()))]
                frames = [f for f, _ in _clip_frames(rng, product, companions, n, size, float(rng.random()))]
                _write_mp4(root / "videos" / f"{key}_{v}.mp4", frames, cfg.mf_fps)
                videos.append(f"videos/{key}_{v}.mp4")
            entries[key] = {"img_path": f"imgs/{key}.jpg", "source": "synthetic", "video_paths": videos}
        (root / f"{split}.json").write_text(json.dumps(entries, indent=1))


def make_synthetic_dataset(output_dir, seed: int = 0, progress: bool = False, **options) -> dict:
    """Write DIR/lpr4m and DIR/movingfashion; `options` override `SyntheticConfig` fields.

    Returns {"lpr4m": path, "movingfashion": path}. Deterministic for a given seed and options.
    """
    cfg = SyntheticConfig(**options)
    out = Path(output_dir)
    lpr, mf = out / "lpr4m", out / "movingfashion"
    _write_lpr(lpr, np.random.default_rng([seed, 0]), cfg)
    _write_movingfashion(mf, np.random.default_rng([seed, 1]), cfg)
    prepare_movingfashion(mf, progress=progress)
    return {"lpr4m": os.fspath(lpr), "movingfashion": os.fspath(mf)}
