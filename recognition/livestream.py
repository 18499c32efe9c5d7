"""The scoring pass over a whole livestream: decode, embed, pool windows, score against the shop.

One streaming pass (recognition/video.py): sampled frames are preprocessed
and encoded in batches of `batch_size`; only the last `window` frame
embeddings (and, for PMD re-ranking, their tokens) are kept between batches.
What grows with the video's length is small: 8 bytes of time per sampled
frame and 4 × P bytes of scores per window (P products), e.g. 14 MB for one
hour at 1 fps against 1000 products.

Windows are pooled exactly as a query clip is (the model's v1 / v2 video
pooling over the window's frames), and scored by cosine against every shop
image. With `rerank_topk` K, PMD re-orders each window's K best products:
the K cosine values are kept and handed out again in PMD order, so the best
slot goes to PMD's choice and the "no product" threshold keeps its meaning.
"""

from __future__ import annotations

import io
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recognition.api import Recognizer
from recognition.shop import Shop, load_shop
from recognition.timeline import WindowScores, window_starts
from recognition.video import DecodeStats, sample_frames
from utils.errors import ConfigError
from utils.runtime.precision import autocast

PAIR_CHUNK = 64  # (window, candidate) pairs PMD scores at once
THUMB_SIDE = 192  # longest side of the spooled thumbnails the report shows


class FrameSpool:
    """Small JPEG thumbnails of every sampled frame, in an anonymous temporary file.

    The report shows one frame per segment, and the segments are known only
    after the whole pass; seeking back into the video would decode up to a
    key-frame interval per segment. A thumbnail costs a few kB of disk (tens of
    MB per hour at 1 fps) and 8 bytes of memory (its offset).
    """

    def __init__(self):
        self.file = tempfile.TemporaryFile()
        self.offsets = array("q", [0])

    def add(self, image) -> None:
        thumb = image.reduce(max(1, max(image.size) // THUMB_SIDE))
        thumb.save(self.file, format="JPEG", quality=85)
        self.offsets.append(self.file.tell())

    def get(self, index: int):
        from PIL import Image

        self.file.seek(self.offsets[index])
        data = self.file.read(self.offsets[index + 1] - self.offsets[index])
        self.file.seek(0, io.SEEK_END)
        return Image.open(io.BytesIO(data)).convert("RGB")

    def close(self) -> None:
        self.file.close()


@dataclass
class Pass:
    """A scoring pass's result: the window scores and what was read."""

    windows: WindowScores
    shop: Shop
    decode: DecodeStats
    seconds: dict  # wall time of {"shop", "decode_and_preprocess", "model"}
    frames: FrameSpool | None = None  # thumbnails of the sampled frames (keep_frames=True); close() when done


class _WindowScorer:
    """Keeps the last `window` frames' embeddings; turns each finished window into a row of scores."""

    def __init__(self, rec: Recognizer, shop_feats: torch.Tensor, window: int, stride: int,
                 shop_tokens: torch.Tensor | None, rerank_topk: int | None):
        self.rec, self.shop_feats, self.window, self.stride = rec, shop_feats, window, stride
        self.shop_tokens, self.rerank_topk = shop_tokens, rerank_topk
        self.tail_raw: torch.Tensor | None = None  # [<= window, E] the newest frames' raw embeddings
        self.tail_tokens: torch.Tensor | None = None  # [<= window, N, E]
        self.seen = 0  # frames scored so far
        self.rows: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []

    def add(self, raw: torch.Tensor, tokens: torch.Tensor | None) -> None:
        """raw [b, E] embeddings of the next b frames (tokens [b, N, E] with re-ranking)."""
        first = self.seen - (0 if self.tail_raw is None else len(self.tail_raw))  # frame index of seq[0]
        seq = raw if self.tail_raw is None else torch.cat([self.tail_raw, raw])
        tok = None
        if tokens is not None:
            tok = tokens if self.tail_tokens is None else torch.cat([self.tail_tokens, tokens])
        self.seen += len(raw)
        # Windows [s, s + window) that end inside this batch, s on the stride grid.
        lo = max(self.seen - len(raw) - self.window + 1, 0)
        hi = self.seen - self.window
        begin = -(-lo // self.stride) * self.stride
        starts = np.arange(begin, hi + 1, self.stride)
        if len(starts):
            self._score(seq, tok, starts - first, starts, self.window)
        keep = min(self.window, len(seq))
        self.tail_raw = seq[-keep:]
        self.tail_tokens = tok[-keep:] if tok is not None else None

    def finish(self) -> None:
        """The window ending at the last frame when the grid missed it, or the one short window."""
        n = self.seen
        expected = window_starts(n, self.window, self.stride)
        done = sum(len(s) for s in self.starts)
        for start in expected[done:]:
            length = min(self.window, n)
            offset = len(self.tail_raw) - (n - start)
            self._score(self.tail_raw, self.tail_tokens, np.array([offset]), np.array([start]), length)

    def _score(self, seq, tok, offsets: np.ndarray, starts: np.ndarray, length: int) -> None:
        index = torch.as_tensor(offsets[:, None] + np.arange(length)[None, :])  # [w, length]
        mask = torch.ones(index.shape, dtype=torch.bool)
        emb = self.rec.pool(seq[index.reshape(-1)], mask)  # [w, E]
        scores = emb @ self.shop_feats.T  # [w, P]
        if self.rerank_topk:
            scores = self._rerank(scores, tok[index.reshape(-1)], mask)
        self.rows.append(scores.numpy().astype(np.float32))
        self.starts.append(starts.astype(np.int64))

    @torch.no_grad()
    def _rerank(self, scores: torch.Tensor, frame_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rec, k = self.rec, min(self.rerank_topk, scores.shape[1])
        w, length = mask.shape
        top_scores, top = scores.topk(k, dim=1)  # [w, K], ordered by cosine
        n, e = frame_tokens.shape[1:]
        video_tokens = frame_tokens.reshape(w, length * n, e).to(rec.device)
        video_mask = mask[:, :, None].expand(w, length, n).reshape(w, length * n).to(rec.device)
        pair_window = torch.arange(w).repeat_interleave(k)
        pair_image = top.reshape(-1)
        values = []
        with autocast(rec.precision, rec.device):
            for a in range(0, len(pair_window), PAIR_CHUNK):
                pw, pi = pair_window[a:a + PAIR_CHUNK], pair_image[a:a + PAIR_CHUNK]
                windows, local = torch.unique(pw, return_inverse=True)
                values.append(rec.model.score_pairs(self.shop_tokens[pi.to(self.shop_tokens.device)],
                                                    video_tokens[windows.to(rec.device)],
                                                    video_mask[windows.to(rec.device)],
                                                    local.to(rec.device)).float().cpu())
        pmd = torch.cat(values).reshape(w, k)
        order = torch.argsort(-pmd, dim=1, stable=True)  # PMD's order of the K candidates
        out = scores.clone()
        out.scatter_(1, torch.gather(top, 1, order), top_scores)  # best cosine slot -> PMD's first choice
        return out


def score_livestream(rec: Recognizer, video: str | Path, shop: str | Path | Shop, *, fps: float = 1.0,
                     window: int = 4, stride: int = 1, batch_size: int = 32, rerank_topk: int | None = None,
                     progress: bool = True, keep_frames: bool = False) -> Pass:
    """One pass over `video` against `shop`; see the module docstring.

    keep_frames: also spool a thumbnail of every sampled frame (`Pass.frames`).
    """
    import time

    if rerank_topk and rec.model.cross is None:
        raise ConfigError(f"--rerank needs a checkpoint with a PMD head; {rec.config.sim_header} has none "
                          "(ICL checkpoints rank by embedding only): drop --rerank")
    shop = shop if isinstance(shop, Shop) else load_shop(shop)
    t0 = time.perf_counter()
    shop_feats, shop_tokens = _encode_shop(rec, shop, batch_size, with_tokens=bool(rerank_topk))
    shop_s = time.perf_counter() - t0
    model_s = 0.0
    stats = DecodeStats()
    scorer = _WindowScorer(rec, torch.from_numpy(shop_feats), window, stride, shop_tokens, rerank_topk)
    times, pending = array("d"), []
    spool = FrameSpool() if keep_frames else None

    def flush():
        nonlocal model_s
        start = time.perf_counter()
        _, raw, tokens = rec.encode_pixels(torch.stack(pending), return_tokens=bool(rerank_topk))
        scorer.add(raw.cpu(), tokens.cpu() if tokens is not None else None)
        pending.clear()
        model_s += time.perf_counter() - start

    bar = tqdm(desc="decode + embed", unit="frame", disable=not progress)
    total_start = time.perf_counter()
    for t, image in sample_frames(video, fps, stats):
        times.append(t)
        pending.append(rec.preprocess(image))
        if spool is not None:
            spool.add(image)
        bar.update(1)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    scorer.finish()
    bar.close()
    total = time.perf_counter() - total_start
    ws = WindowScores(frame_times=np.asarray(times, np.float64), starts=np.concatenate(scorer.starts),
                      lengths=np.full(sum(len(s) for s in scorer.starts), min(window, len(times)), np.int64),
                      scores=np.concatenate(scorer.rows), names=shop.names, duration_s=stats.duration_s, fps=fps)
    return Pass(ws, shop, stats, {"shop": round(shop_s, 3), "decode_and_preprocess": round(total - model_s, 3),
                                  "model": round(model_s, 3)}, spool)


@torch.no_grad()
def _encode_shop(rec: Recognizer, shop: Shop, batch_size: int, with_tokens: bool):
    feats, tokens = [], []
    for a in range(0, len(shop.paths), batch_size):
        pixels = torch.stack([rec.preprocess(p) for p in shop.paths[a:a + batch_size]])
        emb, _, tok = rec.encode_pixels(pixels, return_tokens=with_tokens)
        feats.append(emb)
        if with_tokens:
            tokens.append(tok)
    return torch.cat(feats).numpy(), (torch.cat(tokens) if with_tokens else None)
