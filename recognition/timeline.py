"""From per-window product scores to a timeline of segments (docs/livestream.md).

Windows. The sampled frames (one every 1/fps seconds) are grouped into
windows of `window` frames, a new window every `stride` frames; the last
frames get one more window ending at the last frame, and a video shorter than
one window is a single window. Each window owns the stretch of time around
its centre: from halfway to the previous window's centre to halfway to the
next one's (the first from 0, the last to the end of the video), so the
windows tile the video without overlap.

Smoothing: a Viterbi path over P + 1 states (every product, and "no
product"). A window's reward for product p is its score s[t, p] (cosine of
the window and the product image); for "no product" it is the threshold τ.
The path maximises the summed rewards minus `switch_cost` for every change of
state. So the best-scoring product wins a window unless switching to it and
back costs more than it gains: a blip of n windows survives only if its score
margin summed over them exceeds 2 × switch_cost, and "no product" wins where
no product scores above τ for long enough. Runs of one state are the
segments. Cost O(windows × products), one numpy step per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_PRODUCT = "no product"
TOPK = 5


@dataclass
class WindowScores:
    """What the scoring pass produced; plain arrays, no video pixels."""

    frame_times: np.ndarray  # [F] seconds, the sampled frames
    starts: np.ndarray  # [T] first frame (index into frame_times) of each window
    lengths: np.ndarray  # [T] frames in each window
    scores: np.ndarray  # [T, P] float32 window-product scores (cosine; PMD-reordered with --rerank)
    names: list[str]  # [P] product image ids
    duration_s: float  # end of the video
    fps: float

    def centres(self) -> np.ndarray:
        first = self.frame_times[self.starts]
        last = self.frame_times[self.starts + self.lengths - 1] + 1.0 / self.fps
        return (first + last) / 2

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """[T] start and end (seconds) of the time each window owns."""
        c = self.centres()
        mids = (c[1:] + c[:-1]) / 2
        end = max(self.duration_s, float(self.frame_times[-1]) + 1.0 / self.fps)
        return np.concatenate([[0.0], mids]), np.concatenate([mids, [end]])


def window_starts(num_frames: int, window: int, stride: int) -> np.ndarray:
    """First frame of every window over `num_frames` sampled frames (see the module docstring)."""
    if num_frames <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, num_frames - window + 1, stride)
    if starts[-1] + window < num_frames:
        starts = np.append(starts, num_frames - window)
    return starts


def viterbi(scores: np.ndarray, threshold: float, switch_cost: float) -> np.ndarray:
    """Best state per window: [T] ints in 0..P (P = no product). See the module docstring.

    Ties keep the current state (no switch without a strict gain), then the
    lower product index.
    """
    t_count, p = scores.shape
    rewards = np.empty((t_count, p + 1), np.float64)
    rewards[:, :p] = scores
    rewards[:, p] = threshold
    value = rewards[0].copy()
    back = np.empty((t_count, p + 1), np.int32)
    states = np.arange(p + 1, dtype=np.int32)
    back[0] = states
    for t in range(1, t_count):
        best = int(np.argmax(value))
        switch = value[best] - switch_cost
        moved = switch > value
        back[t] = np.where(moved, best, states)
        value = np.where(moved, switch, value) + rewards[t]
    path = np.empty(t_count, np.int64)
    path[-1] = int(np.argmax(value))
    for t in range(t_count - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def segments(ws: WindowScores, path: np.ndarray) -> list[dict]:
    """Runs of one state -> [{start_s, end_s, image_id (None: no product), label, score, top5, frame_s}].

    score: the label's mean window score over the run (for "no product", the
    mean best product score, which stayed under the threshold); top5: the
    products with the highest mean score over the run; frame_s: the time of the
    middle frame of the run's best window for its label (its representative frame).
    """
    starts, ends = ws.slots()
    p = len(ws.names)
    change = np.flatnonzero(np.diff(path)) + 1
    bounds = np.concatenate([[0], change, [len(path)]])
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = int(path[a])
        run = ws.scores[a:b]
        mean = run.mean(axis=0)
        top = np.argsort(-mean, kind="stable")[:TOPK]
        if state < p:
            score, best = float(mean[state]), a + int(np.argmax(run[:, state]))
        else:
            score, best = float(run.max(axis=1).mean()), a + (b - a) // 2
        middle = ws.starts[best] + ws.lengths[best] // 2
        out.append({
            "start_s": round(float(starts[a]), 3), "end_s": round(float(ends[b - 1]), 3),
            "image_id": ws.names[state] if state < p else None,
            "label": ws.names[state] if state < p else NO_PRODUCT,
            "score": round(score, 4),
            "top5": [{"image_id": ws.names[i], "score": round(float(mean[i]), 4)} for i in top],
            "frame_s": round(float(ws.frame_times[middle]), 3),
        })
    return out


def build_timeline(ws: WindowScores, threshold: float, switch_cost: float) -> list[dict]:
    return segments(ws, viterbi(ws.scores, threshold, switch_cost))


def label_at(segs: list[dict], times: np.ndarray) -> list[str]:
    """The label of the segment holding each time (NO_PRODUCT outside every segment)."""
    ends = np.array([s["end_s"] for s in segs])
    idx = np.searchsorted(ends, times, side="right")
    return [segs[i]["label"] if i < len(segs) and segs[i]["start_s"] <= t else NO_PRODUCT
            for i, t in zip(idx, times)]
