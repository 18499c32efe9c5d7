"""A small Python API over a RICE checkpoint: embed images and videos, rank a shop.

    from recognition.api import Recognizer
    rice = Recognizer.load("model.pt")                  # any checkpoint the evaluation scripts read
    shop = rice.encode_images(["a.jpg", "b.jpg"])       # [2, E] float32, L2-normalised
    clip = rice.encode_video("clip.mp4")                # [E] (an mp4, or a folder of frames)
    for name, score in rice.rank("clip.mp4", "shop_dir/")[:5]: print(name, score)

Everything runs in eval mode under the chosen precision, with the
preprocessing the checkpoint was released or trained with
(`RICEConfig.preprocessing`, exact decoding), so the embeddings equal those
of lpr4m_embedding_eval.py / movingfashion_eval.py for the same files
(tests/test_livestream.py checks that). A video is pooled as the model pools
a query clip: up to `max_frames` frames chosen by the evaluation rule
(dataloaders/sampling.py) from the folder's files in name order, or from an
mp4 decoded at `fps`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataloaders.sampling import eval_frame_indices
from dataloaders.transforms import build_transform
from modules.checkpoint import load_checkpoint
from modules.rice import RICEModel
from recognition.shop import IMAGE_SUFFIXES, Shop, load_shop
from recognition.video import sample_frames
from utils.errors import ConfigError, DataError
from utils.runtime.precision import autocast, check_precision


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); else bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_precision(device: torch.device) -> str:
    """bf16 where the hardware computes it natively, fp32 elsewhere."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}, but no GPU is visible; use --device cpu")
    return torch.device(name)


class Recognizer:
    """A loaded RICE model with its preprocessing, device and precision."""

    def __init__(self, model: RICEModel, device: torch.device, precision: str, decode: str = "exact"):
        check_precision(precision, device)
        self.model = model.to(device).eval()
        self.config = model.config
        self.device, self.precision = device, precision
        self.transform = build_transform(self.config.preprocessing, train=False,
                                         image_size=self.config.vision.image_size, decode=decode)

    @classmethod
    def load(cls, ckpt_path: str | Path, device: str | None = None, precision: str | None = None,
             decode: str = "exact") -> Recognizer:
        """Load any checkpoint the evaluation scripts read (OpenAI, RICE v1/v2, ours), with all its heads.

        device: "cpu", "cuda", "cuda:1" or None (a GPU when there is one).
        precision: "fp32", "bf16", "fp16" or None (bf16 where the hardware has it, else fp32).
        decode: "exact" (the releases' pixels), "draft" or "tv" (faster; docs/data.md#decoding).
        """
        dev = resolve_device(device)
        model = RICEModel.from_checkpoint(load_checkpoint(ckpt_path))
        return cls(model, dev, precision or default_precision(dev), decode)

    # ------------------------------------------------------------ pixels
    def preprocess(self, image: Image.Image | str | Path) -> torch.Tensor:
        """A PIL image or an image file -> uint8 [3, S, S] (the checkpoint's eval preprocessing)."""
        if not isinstance(image, Image.Image):
            try:
                return self.transform.read(str(image))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                raise DataError(f"{image}: cannot read this image ({err})") from None
        return self.transform(image.convert("RGB"))

    # ------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, return_tokens: bool = False):
        """uint8 [B, 3, S, S] -> (L2-normalised [B, E] float32, raw per-frame embeddings [B, E], tokens | None)."""
        with autocast(self.precision, self.device):
            raw, tokens = self.model.visual(pixels.to(self.device), return_tokens)
        raw = raw.float()
        return torch.nn.functional.normalize(raw, dim=-1).cpu(), raw, tokens

    @torch.no_grad()
    def encode_images(self, images: Iterable[Image.Image | str | Path], batch_size: int = 64) -> np.ndarray:
        """Shop images (PIL images or files) -> [N, E] float32, L2-normalised, in input order."""
        out, batch = [], []
        for image in images:
            batch.append(self.preprocess(image))
            if len(batch) == batch_size:
                out.append(self.encode_pixels(torch.stack(batch))[0])
                batch = []
        if batch:
            out.append(self.encode_pixels(torch.stack(batch))[0])
        if not out:
            return np.zeros((0, self.config.vision.embed_dim), np.float32)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def pool(self, frame_raw: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Per-frame raw embeddings of the valid frames [n, E] + mask [B, T] -> video embeddings [B, E].

        The model's own pooling (v1: normalise each frame, mean, normalise;
        v2: mean, normalise), exactly what `RICEModel.encode_videos` does after
        its encoder pass.
        """
        return self.model.pool_frames(frame_raw.to(self.device), frame_mask.cpu()).float().cpu()

    @torch.no_grad()
    def encode_video(self, video: str | Path | Sequence[Image.Image], max_frames: int = 10,
                     fps: float = 1.0) -> np.ndarray:
        """A clip -> its embedding [E] (float32, L2-normalised), pooled over at most `max_frames` frames.

        video: a video file (decoded at `fps`), a folder of frame images (name
        order) or a list of PIL images. Frames are chosen by the evaluation rule.
        """
        if isinstance(video, (str, Path)) and not Path(video).is_dir():
            # A video file: every sampled frame is preprocessed as it is decoded (S x S uint8 each, held
            # until the choice is made), so this is for clips; whole livestreams: recognize_livestream.py.
            frames = [self.preprocess(image) for _, image in sample_frames(video, fps)]
        else:
            frames = self._listed_frames(video)
        chosen = [frames[i] for i in eval_frame_indices(len(frames), max_frames)]
        pixels = torch.stack([f if isinstance(f, torch.Tensor) else self.preprocess(f) for f in chosen])
        _, raw, _ = self.encode_pixels(pixels)
        return self.pool(raw, torch.ones(1, len(chosen), dtype=torch.bool))[0].numpy()

    @staticmethod
    def _listed_frames(video) -> list:
        if isinstance(video, (str, Path)):
            path = Path(video)
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{path}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            return files
        frames = list(video)
        if not frames:
            raise DataError("encode_video got no frames")
        return frames

    def encode_shop(self, shop: str | Path | Shop, batch_size: int = 64) -> tuple[Shop, np.ndarray]:
        """A shop folder (or a loaded Shop) -> (the Shop, its embeddings [P, E])."""
        shop = shop if isinstance(shop, Shop) else load_shop(shop)
        return shop, self.encode_images(shop.paths, batch_size)

    def rank(self, video, shop, topk: int | None = None, max_frames: int = 10,
             fps: float = 1.0) -> list[tuple[str, float]]:
        """Score every product of a shop against one clip: [(image name, cosine)], best first.

        Ties keep the shop's (sorted file name) order, as the evaluation's ranking does.
        """
        shop, feats = self.encode_shop(shop)
        query = self.encode_video(video, max_frames=max_frames, fps=fps)
        scores = feats @ query
        order = np.argsort(-scores, kind="stable")[:topk]
        return [(shop.names[i], float(scores[i])) for i in order]
