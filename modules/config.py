"""Model configurations as plain data (no torch import: the command lines read them for --help).

`VisionConfig` is the shape of a CLIP vision tower, `RICEConfig` the whole
model: encoder, which heads (the README rows), pooling and preprocessing. The
model file of a training run stores `RICEConfig.to_dict()`, so evaluation
rebuilds exactly what was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from utils.errors import ConfigError

# CLIP's input normalisation, per RGB channel, of pixels scaled to [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MEAN_POOLING = "mean_pooling"  # the ICL row: the encoder alone
CROSS_ATTENTION = "cross_attention"  # adds the pairwise matching decoder (PMD)
SIM_HEADERS = (MEAN_POOLING, CROSS_ATTENTION)
STYLES = ("v1", "v2")  # the two releases' video pooling and preprocessing (docs/method.md, docs/evaluation.md)


@dataclass(frozen=True)
class VisionConfig:
    """Shape of a CLIP vision tower. Everything else follows from these."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    embed_dim: int = 512  # output width of `proj`

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + 1

    def to_dict(self) -> dict:
        return asdict(self)


# Named configurations. "tiny" and "small" are for tests and the CPU demo.
VISION_CONFIGS: dict[str, VisionConfig] = {
    "ViT-B/32": VisionConfig(),
    "ViT-B/16": VisionConfig(patch_size=16),
    "small": VisionConfig(image_size=64, patch_size=8, width=256, layers=4, heads=4, embed_dim=128),
    "tiny": VisionConfig(image_size=64, patch_size=16, width=128, layers=2, heads=2, embed_dim=64),
}


def check_heads(sim_header: str, recons_feat: bool) -> None:
    """The one rule on the heads: a known sim_header, and PFR only on top of PMD."""
    if sim_header not in SIM_HEADERS:
        raise ConfigError(f"--sim_header must be one of {SIM_HEADERS}, got {sim_header!r}")
    if recons_feat and sim_header != CROSS_ATTENTION:
        raise ConfigError(f"--recons_feat (PFR) needs --sim_header {CROSS_ATTENTION}: PFR reads the PMD "
                          "attention maps")


@dataclass
class RICEConfig:
    vision: VisionConfig
    sim_header: str = MEAN_POOLING  # CROSS_ATTENTION adds PMD
    cross_num_hidden_layers: int = 2  # PMD depth L: L-1 self blocks + 1 cross block
    recons_feat: bool = False  # PFR, needs PMD
    pmd_heads: int = 8
    video_pooling: str = "v1"  # "v1" | "v2"
    transform_style: str | None = None  # preprocessing the model was trained with; None: as video_pooling
    logit_scale: float = 100.0  # ICL and PMD training scale
    pmd_weight: float = 1.0
    pfr_weight: float = 0.05
    num_hard_negatives: int = 3
    pmd_chunk_size: int | None = None  # pairs PMD decodes at once; None: by device (modules/rice.py)
    head_style: str = "v1"  # "v1": the v1 heads (modules/heads.py); "v2": the v2 release's (modules/heads_v2.py)

    def __post_init__(self):
        check_heads(self.sim_header, self.recons_feat)
        for name in ("video_pooling", "transform_style", "head_style"):
            value = getattr(self, name)
            if value not in STYLES and not (name == "transform_style" and value is None):
                raise ConfigError(f"{name} must be one of {STYLES}, got {value!r}")
        if (self.pmd_chunk_size is not None and self.pmd_chunk_size < 1) or self.num_hard_negatives < 0:
            raise ConfigError("pmd_chunk_size must be >= 1 and num_hard_negatives >= 0")

    @property
    def use_pmd(self) -> bool:
        return self.sim_header == CROSS_ATTENTION

    @property
    def preprocessing(self) -> str:
        """The transform style ("v1" | "v2") evaluation and validation must use for this model."""
        return self.transform_style or self.video_pooling

    def to_dict(self) -> dict:
        return asdict(self)  # `vision` becomes a plain dict

    @classmethod
    def from_dict(cls, d: dict) -> "RICEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown RICEConfig keys {unknown}; known keys: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("vision"), dict):
            d["vision"] = VisionConfig(**d["vision"])
        return cls(**d)
