"""What the livestream recogniser writes (docs/livestream.md).

In --output_dir:
  timeline.json  the run's settings, what decoding and the shop check skipped,
                 and the segments [{start_s, end_s, image_id (null: no
                 product), label, score, top5 [{image_id, score}], frame_s}]
  timeline.csv   the segments, one per line (top5 as "id:score;id:score...")
  report.html    one self-contained page: the timeline as a coloured bar, then
                 every segment with its representative frame and its top-5
                 shop images with scores (images inlined as base64 thumbnails)
  timeline.png   the timeline for papers and slides (matplotlib, Agg): the
                 segments on one row per product, and each window's best score
                 against the "no product" threshold
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from recognition.timeline import WindowScores
from utils.eval.html_report import colour, esc, figure, page


def write_json_csv(out: Path, info: dict, segments: list[dict]) -> None:
    (out / "timeline.json").write_text(json.dumps({**info, "segments": segments}, indent=1) + "\n")
    with open(out / "timeline.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["start_s", "end_s", "image_id", "label", "score", "top5"])
        for s in segments:
            top5 = ";".join(f"{t['image_id']}:{t['score']}" for t in s["top5"])
            writer.writerow([s["start_s"], s["end_s"], s["image_id"] or "", s["label"], s["score"], top5])


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def write_html(out: Path, info: dict, segments: list[dict], shop_paths: dict[str, str],
               frames: dict[float, object]) -> Path:
    """report.html; `frames` maps a segment's frame_s to its decoded picture (missing: not shown)."""
    names = list(shop_paths)
    index = {n: i for i, n in enumerate(names)}
    total = max(info["duration_s"], segments[-1]["end_s"] if segments else 0.0) or 1.0
    bar = "".join(
        f'<div style="width:{100 * (s["end_s"] - s["start_s"]) / total:.4f}%;'
        f'background:{colour(index.get(s["image_id"]))}" '
        f'title="{esc(_clock(s["start_s"]))}–{esc(_clock(s["end_s"]))} {esc(s["label"])} ({s["score"]:.3f})"></div>'
        for s in segments)
    shown = sorted({s["image_id"] for s in segments if s["image_id"]}, key=index.get)
    legend = " ".join(f'<span><span class="swatch" style="background:{colour(index[n])}"></span>{esc(n)}</span>'
                      for n in shown) + f' <span><span class="swatch" style="background:{colour(None)}"></span>' \
                                        "no product</span>"
    cache: dict = {}
    cards = []
    for s in segments:
        frame = frames.get(s["frame_s"])
        rep = figure(frame, f"frame at {_clock(s['frame_s'])}") if frame is not None else ""
        tops = "".join(figure(shop_paths[t["image_id"]], f"{t['image_id'][:18]} {t['score']:.3f}",
                              "pick" if t["image_id"] == s["image_id"] else "", cache) for t in s["top5"])
        cards.append(
            f'<div class="card"><span class="swatch" style="background:{colour(index.get(s["image_id"]))}"></span>'
            f'<b>{esc(_clock(s["start_s"]))} – {esc(_clock(s["end_s"]))}</b> {esc(s["label"])} '
            f'<span class="muted">score {s["score"]:.3f}</span>'
            f'<div class="row">{rep}<div style="width:18px"></div>{tops}</div></div>')
    settings = ", ".join(f"{k} {esc(info[k])}" for k in ("fps", "window", "stride", "threshold", "switch_cost",
                                                         "rerank_topk") if info.get(k) is not None)
    skips = info.get("decode", {}), info.get("shop", {})
    notes = [f"{skips[0].get('corrupt_packets', 0)} corrupt packets skipped" if skips[0].get("corrupt_packets") else "",
             f"{len(skips[1].get('duplicates', {}))} duplicate shop images skipped" if skips[1].get("duplicates") else ""]
    body = (f"<h1>Livestream timeline</h1><p>{esc(info['video'])} ({_clock(info['duration_s'])}) against "
            f"{esc(info['shop_folder'])} ({len(names)} products)</p>"
            f'<p class="muted">{settings}. {esc("; ".join(n for n in notes if n))}</p>'
            f'<div class="bar">{bar}</div><p>{legend}</p>'
            f"<h2>Segments ({len(segments)})</h2><p class='muted'>representative frame, then the segment's top 5 shop "
            "images by mean window score (blue: the product chosen)</p>" + "\n".join(cards))
    path = out / "report.html"
    path.write_text(page("Livestream timeline", body))
    return path


def write_png(out: Path, ws: WindowScores, segments: list[dict], threshold: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ws.names
    index = {n: i for i, n in enumerate(names)}
    shown = sorted({s["image_id"] for s in segments if s["image_id"]}, key=index.get)
    rows = {n: r for r, n in enumerate(shown)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 2.2 + 0.28 * len(shown)), sharex=True,
                                      gridspec_kw={"height_ratios": [max(len(shown), 1), 2]})
    for s in segments:
        if s["image_id"]:
            hue = (index[s["image_id"]] * 137.508) % 360 / 360
            top.broken_barh([(s["start_s"], s["end_s"] - s["start_s"])], (rows[s["image_id"]] - 0.4, 0.8),
                            color=matplotlib.colors.hsv_to_rgb((hue, 0.65, 0.8)))
    top.set_yticks(range(len(shown)), [n[:12] for n in shown], fontsize=7)
    top.set_ylim(-0.6, max(len(shown), 1) - 0.4)
    top.invert_yaxis()
    top.set_title("products recognised along the video")
    starts, ends = ws.slots()
    centres = (starts + ends) / 2
    bottom.plot(centres, ws.scores.max(axis=1), lw=0.8, color="C0", label="best product score per window")
    bottom.axhline(threshold, color="k", ls=":", lw=0.8, label=f"no-product threshold {threshold}")
    bottom.set_xlabel("time (s)")
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bottom.set_xlim(0, float(np.max(ends)))
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
