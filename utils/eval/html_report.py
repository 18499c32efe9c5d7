"""Self-contained HTML reports: images inlined as base64 JPEG thumbnails, no scripts, no external files.

Used by the evaluation's `--report` (`write_retrieval_report`: the worst and
a random sample of queries, each with its frames and its top-10 gallery
images, ground truth marked) and by the livestream recogniser
(recognition/report.py). One file opens anywhere and can be mailed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

THUMB = 112  # longest side of an inlined thumbnail, pixels
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px} .muted{color:#777;font-size:12px}
.row{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start;margin:6px 0 14px}
figure{margin:0;text-align:center;font-size:11px;width:118px}
figure img{border:3px solid transparent;border-radius:3px;max-width:112px;max-height:112px}
figure.gt img{border-color:#1a9850} figure.pick img{border-color:#2166ac}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:10px 0}
.bar{display:flex;height:34px;border:1px solid #999;border-radius:3px;overflow:hidden;margin:8px 0}
.bar div{height:100%} table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eee}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:middle}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def thumbnail_uri(image, size: int = THUMB) -> str | None:
    """A PIL image or an image file -> data:image/jpeg;base64 URI of a thumbnail (None if unreadable)."""
    from PIL import Image

    try:
        img = image if isinstance(image, Image.Image) else Image.open(image)
        img = img.convert("RGB")
        img.thumbnail((size, size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(image, caption: str, css_class: str = "", cache: dict | None = None) -> str:
    """<figure> with the inlined thumbnail (or a note when it cannot be read) and a caption."""
    key = image if isinstance(image, (str, Path)) else None
    if cache is not None and key is not None and key in cache:
        uri = cache[key]
    else:
        uri = thumbnail_uri(image)
        if cache is not None and key is not None:
            cache[key] = uri
    body = f'<img src="{uri}" alt="{esc(caption)}">' if uri else '<div class="muted">(unreadable)</div>'
    cls = f' class="{css_class}"' if css_class else ""
    return f"<figure{cls}>{body}<figcaption>{esc(caption)}</figcaption></figure>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def colour(index: int | None) -> str:
    """A distinct colour per product index (golden-ratio hues); grey for "no product"."""
    if index is None:
        return "#d9d9d9"
    return f"hsl({(index * 137.508) % 360:.1f},65%,52%)"


# ---------------------------------------------------------------- evaluation report
def write_retrieval_report(out_dir: Path, split, ranking_rows: list[dict], num_worst: int, num_random: int,
                           seed: int = 0, depth: int = 10) -> Path:
    """report.html of an evaluation: the `num_worst` worst queries and `num_random` random others.

    ranking_rows: the lines of rankings.jsonl (query_id, gt, ranking [{image_id, score, pmd_score?}]).
    "Worst": the ground truth furthest down the ranking (not in the top `depth`
    first, then by the lowest ground-truth score), ties in test-set order.
    """
    gallery_path = {}
    for g in split.gallery:  # per-livestream ids are unique within their livestream
        gallery_path.setdefault((g.group if split.per_group else "", g.image_id), g.path)
    rank_of_gt = []
    for row in ranking_rows:
        ids = [e["image_id"] for e in row["ranking"]]
        hit = next((i for i, x in enumerate(ids) if x in set(row["gt"])), None)
        rank_of_gt.append(depth if hit is None else hit)
    order = sorted(range(len(ranking_rows)), key=lambda q: (-rank_of_gt[q], q))
    worst = order[:num_worst]
    rest = np.setdiff1d(np.arange(len(ranking_rows)), worst)
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(rest, size=min(num_random, len(rest)), replace=False).tolist())
    cache: dict = {}

    def card(q: int) -> str:
        query, row = split.queries[q], ranking_rows[q]
        group = query.group if split.per_group else ""
        gt = set(row["gt"])
        hit = "not in the top 10" if rank_of_gt[q] >= depth else f"ground truth at rank {rank_of_gt[q] + 1}"
        frames = "".join(figure(p, f"frame {i + 1}", cache=None) for i, p in enumerate(query.frame_paths[:10]))
        ranked = []
        for r, entry in enumerate(row["ranking"][:depth]):
            score = f"{entry['score']:.3f}" + (f" · PMD {entry['pmd_score']:.2f}" if "pmd_score" in entry else "")
            path = gallery_path.get((group, entry["image_id"]))
            is_gt = entry["image_id"] in gt
            ranked.append(figure(path, f"#{r + 1} {score}" + (" ✓ GT" if is_gt else ""), "gt" if is_gt else "",
                                 cache) if path else f"<figure>{esc(entry['image_id'])}</figure>")
        gts = "".join(figure(gallery_path[(group, g)], "ground truth", "gt", cache)
                      for g in row["gt"] if (group, g) in gallery_path)
        return (f'<div class="card"><b>{esc(query.query_id)}</b> <span class="muted">{esc(hit)}</span>'
                f'<div class="muted">frames</div><div class="row">{frames}</div>'
                f'<div class="muted">top {depth} gallery images (green: ground truth), cosine</div>'
                f'<div class="row">{"".join(ranked)}</div>'
                f'<div class="muted">ground truth</div><div class="row">{gts}</div></div>')

    body = [f"<h1>Retrieval report</h1><p class='muted'>{len(ranking_rows)} queries; the {len(worst)} worst "
            f"(ground truth furthest down) and {len(sample)} drawn at random (seed {seed}).</p>",
            "<h2>Worst queries</h2>", *map(card, worst), "<h2>Random queries</h2>", *map(card, sample)]
    path = Path(out_dir) / "report.html"
    path.write_text(page("Retrieval report", "\n".join(body)))
    return path


def read_rankings(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "rankings.jsonl").read_text().splitlines()]
