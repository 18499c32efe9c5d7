"""How good a timeline is against a known schedule (docs/livestream.md).

  * per-second accuracy: at the middle of every second of the schedule
    (0.5 s, 1.5 s, ...), is the predicted label (a product id or "no
    product") the true one;
  * segment F1 at temporal IoU 0.5: a predicted product segment is a hit when
    it has the label of a not yet matched true product segment and their
    intersection over union in time is at least 0.5 (greedy, best IoU first);
    precision over predicted product segments, recall over true ones.
    "No product" segments are not counted as segments.

Chance levels beside them:
  * accuracy of the best constant answer (always the most common label) and
    of a uniformly random label per second (1 / (products + 1));
  * segment F1 of the same predicted segments with their labels drawn
    uniformly from the shop (mean over `draws` draws, fixed seed).
"""

from __future__ import annotations

import numpy as np

from recognition.timeline import NO_PRODUCT, label_at

IOU = 0.5


def _label(seg: dict) -> str:
    return seg.get("image_id") or NO_PRODUCT


def per_second(truth: list[dict], predicted: list[dict], duration_s: float) -> tuple[float, list[str]]:
    times = np.arange(int(np.floor(duration_s))) + 0.5
    true = label_at([{**s, "label": _label(s)} for s in truth], times)
    pred = label_at([{**s, "label": _label(s)} for s in predicted], times)
    return float(np.mean([a == b for a, b in zip(true, pred)])), true


def segment_f1(truth: list[dict], predicted: list[dict], iou: float = IOU) -> dict:
    true = [s for s in truth if s.get("image_id")]
    pred = [s for s in predicted if s.get("image_id")]
    pairs = []
    for i, p in enumerate(pred):
        for j, g in enumerate(true):
            if p["image_id"] != g["image_id"]:
                continue
            inter = min(p["end_s"], g["end_s"]) - max(p["start_s"], g["start_s"])
            union = max(p["end_s"], g["end_s"]) - min(p["start_s"], g["start_s"])
            if inter > 0 and inter / union >= iou:
                pairs.append((inter / union, i, j))
    used_p, used_g = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
    hits = len(used_p)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_segments": len(true),
            "predicted_segments": len(pred)}


def score(schedule: dict, timeline: list[dict], draws: int = 100, seed: int = 0) -> dict:
    """All metrics and their chance levels, in percent (see the module docstring)."""
    truth, duration, products = schedule["segments"], schedule["duration_s"], schedule["products"]
    accuracy, true_labels = per_second(truth, timeline, duration)
    seg = segment_f1(truth, timeline)
    _, counts = np.unique(true_labels, return_counts=True)
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(draws):
        relabelled = [{**s, "image_id": str(rng.choice(products))} if s.get("image_id") else s for s in timeline]
        shuffled.append(segment_f1(truth, relabelled)["f1"])
    return {
        "accuracy": 100 * accuracy,
        "segment_f1": 100 * seg["f1"], "segment_precision": 100 * seg["precision"],
        "segment_recall": 100 * seg["recall"],
        "true_segments": seg["true_segments"], "predicted_segments": seg["predicted_segments"],
        "chance_accuracy_majority": 100 * counts.max() / counts.sum(),
        "chance_accuracy_uniform": 100 / (len(products) + 1),
        "chance_segment_f1": 100 * float(np.mean(shuffled)),
        "seconds": len(true_labels),
    }
