"""Streaming video decoding at a fixed sampling rate (PyAV), with counted skips.

    stats = DecodeStats()
    for t, image in sample_frames("live.mp4", fps=1.0, stats=stats): ...

Frames come one at a time as (presentation time in seconds, RGB PIL image);
nothing but the current frame is held, so memory does not grow with the
video's length. Sampling is by timestamp, not by frame count: the first
decoded frame at or after each point k / fps of the sampling grid is taken
(after a gap, the next grid point is the first one after the frame taken).
A variable frame rate therefore needs no special case: the sampled times are
the frames' own presentation times.

Bad input (docs/livestream.md):
  * a file PyAV cannot open, or one without a video stream: DataError;
  * a packet the decoder rejects (a corrupt stretch mid-stream): skipped and
    counted, decoding goes on with the next packet;
  * frames without a timestamp or going back in time: skipped and counted;
  * a video that yields no frame at all: DataError.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import DataError


@dataclass
class DecodeStats:
    """What one pass over a video saw (filled in while iterating)."""

    decoded: int = 0  # frames the decoder produced
    sampled: int = 0  # frames handed out
    corrupt_packets: int = 0  # packets the decoder rejected (skipped)
    no_timestamp: int = 0  # frames without a presentation time (skipped)
    out_of_order: int = 0  # frames whose time went back (skipped)
    duration_s: float = 0.0  # end of the last decoded frame (its time plus one frame interval)
    frame_intervals: list[float] = field(default_factory=list)  # a few first intervals, to spot a variable rate

    def notes(self) -> list[str]:
        """One line per kind of skip, for the log."""
        out = []
        if self.corrupt_packets:
            out.append(f"{self.corrupt_packets} corrupt packets skipped (frames in them are lost)")
        if self.no_timestamp:
            out.append(f"{self.no_timestamp} frames without a timestamp skipped")
        if self.out_of_order:
            out.append(f"{self.out_of_order} frames going back in time skipped")
        return out

    def to_dict(self) -> dict:
        return {"decoded_frames": self.decoded, "sampled_frames": self.sampled,
                "corrupt_packets": self.corrupt_packets, "frames_without_timestamp": self.no_timestamp,
                "frames_out_of_order": self.out_of_order, "duration_s": round(self.duration_s, 3)}


def open_video(path: str | Path):
    """(container, video stream) or DataError naming the file."""
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--video {path}: no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"--video {path}: PyAV cannot open it as a video ({err}); pass an mp4/mkv/webm file") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"--video {path}: the file has no video stream; pass a file with video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads: the same frames, decoded in parallel
    return container, stream


def sample_frames(path: str | Path, fps: float, stats: DecodeStats | None = None) -> Iterator[tuple[float, object]]:
    """Yield (time in seconds, RGB PIL image) at about `fps` frames per second of video time.

    Raises DataError for a file that cannot be opened or yields no frame.
    """
    import av

    stats = stats if stats is not None else DecodeStats()
    container, stream = open_video(path)
    next_t = 0.0
    last_t = -math.inf
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:  # e.g. InvalidDataError: bytes the decoder cannot use
                stats.corrupt_packets += 1
                continue
            for frame in frames:
                stats.decoded += 1
                t = frame.time
                if t is None:
                    stats.no_timestamp += 1
                    continue
                if t <= last_t:
                    stats.out_of_order += 1
                    continue
                if last_t > -math.inf and len(stats.frame_intervals) < 100:
                    stats.frame_intervals.append(t - last_t)
                last_t = t
                stats.duration_s = max(stats.duration_s, t + _frame_interval(stream))
                if t + 1e-9 < next_t:
                    continue
                stats.sampled += 1
                next_t = (math.floor(t * fps + 1e-9) + 1) / fps  # the next grid point after t
                yield t, frame.to_image()
    except av.FFmpegError as err:  # the container itself breaks down (not a single packet)
        if stats.decoded == 0:
            raise DataError(f"--video {path}: cannot read the video ({err})") from None
        stats.corrupt_packets += 1
    finally:
        container.close()
    if stats.sampled == 0:
        raise DataError(f"--video {path}: no decodable video frame (the stream is empty or every packet is corrupt)")


def _frame_interval(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.0

