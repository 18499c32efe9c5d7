"""Read every checkpoint format RICE meets, with the architecture inferred from shapes.

One entry point, `load_checkpoint(path)`, detects the format and returns a
`LoadedCheckpoint` whose tensors are fp32 and whose names are ours:

| format    | file                                           | keys                                        |
|-----------|------------------------------------------------|---------------------------------------------|
| "openai"  | OpenAI `ViT-B-32.pt` (TorchScript) or a plain  | `visual.*` + the CLIP text tower            |
|           | state dict with the same keys                  |                                             |
| "rice_v1" | `pytorch_model.bin.<epoch>` (docs/checkpoints.md)        | `clip.visual.*`, `clip.<text tower>`,       |
|           |                                                | `cross.*`, `similarity_dense.*`,            |
|           |                                                | `recons_weights.*`; fp16 weights            |
| "rice_v2" | `rice_final.pth`, or `iter{N}.ckpt` holding it | `module.image_encoder.model.*` (encoder),    |
|           | under `model` (docs/checkpoints.md)                      | `module.transformer.*` (the v2 heads)       |
| "ours"    | `{"format": "rice-repro", "model": ...}`       | `visual.*`, `cross.*`, ... (RICEModel)      |

Loading is strict: the unused CLIP text tower (and v2's unused decoder embeddings) is
ignored with one log line; any other missing or unexpected key is a
`CheckpointError` that names the keys and the file. Plain pickles are read
with `weights_only=True`, so a checkpoint cannot run code on load.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from modules.clip_vit import VisionTransformer
from modules.config import CROSS_ATTENTION, MEAN_POOLING, RICEConfig, VisionConfig
from utils.errors import CheckpointError, ConfigError

logger = logging.getLogger("rice")

OUR_FORMAT = "rice-repro"
HEAD_PREFIXES = ("cross.", "similarity_dense.", "recons_weights.")
# The CLIP text tower, which RICE does not use (names without any `clip.` prefix).
TEXT_PREFIXES = ("token_embedding.", "transformer.", "ln_final.")
TEXT_NAMES = {"positional_embedding", "text_projection", "logit_scale"}
V2_ENCODER_PREFIX = "module.image_encoder.model."
V2_HEADS_PREFIX = "module.transformer."  # v2's own 768-d PMD variant (modules/heads_v2.py)
# v2 head names (after V2_HEADS_PREFIX) -> ours; other keys under the prefix (the decoder's unused
# embedding module) are skipped.
V2_HEAD_NAMES = {"transformer.transformer.layers.": "decoder.layers.", "transformer.pooler.": "decoder.pooler.",
                 "heads.vim.": "vim.", "heads.rec.": "rec.", "logit_scale": "logit_scale"}
V2_OUR_PREFIXES = ("decoder.", "vim.", "rec.", "logit_scale")
ENCODER_PREFIX = {"openai": "visual.", "ours": "visual.", "rice_v1": "clip.visual.", "rice_v2": V2_ENCODER_PREFIX}
OPENAI_METADATA = {"input_resolution", "context_length", "vocab_size"}  # TorchScript attributes


@dataclass
class HeadsConfig:
    """The PMD/PFR heads a checkpoint holds, as far as their tensors tell."""

    sim_header: str  # "mean_pooling" | "cross_attention"
    cross_num_hidden_layers: int = 2
    recons_feat: bool = False
    pmd_heads: int = 8  # from the PFR conv's input channels when present, else 8
    head_style: str = "v1"  # "v2": the v2 release's heads (modules/heads_v2.py)


@dataclass
class LoadedCheckpoint:
    path: str
    format: str  # "openai" | "rice_v1" | "rice_v2" | "ours"
    vision: VisionConfig
    visual_state: dict[str, Tensor]  # encoder keys without prefix, fp32
    heads_state: dict[str, Tensor] = field(default_factory=dict)  # v1 head names, fp32
    heads: HeadsConfig | None = None  # None when the file has no PMD keys
    text_init: dict[str, Tensor] = field(default_factory=dict)  # "positional_embedding", "resblock0.*"
    video_pooling: str = "v1"  # "v1" | "v2" (docs/method.md)
    extra: dict = field(default_factory=dict)  # format "ours": the file's other entries

    def model_config(self) -> RICEConfig:
        """The RICEConfig this checkpoint describes (stored in our format, inferred from shapes otherwise)."""
        stored = self.extra.get("model_config") if self.format == "ours" else None
        if stored is not None:
            return RICEConfig.from_dict({**stored, "vision": self.vision})
        heads = self.heads
        if heads is None:
            return RICEConfig(vision=self.vision, video_pooling=self.video_pooling)
        return RICEConfig(vision=self.vision, sim_header=heads.sim_header,
                          cross_num_hidden_layers=heads.cross_num_hidden_layers, recons_feat=heads.recons_feat,
                          pmd_heads=heads.pmd_heads, video_pooling=self.video_pooling, head_style=heads.head_style)

    def check_flags(self, sim_header: str, cross_num_hidden_layers: int, recons_feat: bool) -> tuple[dict, list[str]]:
        """Check the evaluation flags of a README row against the heads this file holds.

        Returns RICEConfig overrides for scoring (PFR is a training loss and is
        never built; `mean_pooling` on a PMD checkpoint keeps the encoder only)
        and notes worth telling the user. Raises ConfigError when the flags ask
        for heads the file lacks or describe them differently.
        """
        heads, notes = self.heads, []
        has_pmd = heads is not None and heads.sim_header == CROSS_ATTENTION
        if sim_header == MEAN_POOLING:
            if has_pmd:
                notes.append(f"{self.path} holds a PMD head; --sim_header {MEAN_POOLING} evaluates its encoder only")
            return ({"sim_header": MEAN_POOLING, "recons_feat": False} if has_pmd else {}), notes
        if not has_pmd:
            raise ConfigError(
                f"--sim_header {CROSS_ATTENTION}, but {self.path} ({self.format}) has no PMD head (no 'cross.*' "
                f"weights); evaluate it with --sim_header {MEAN_POOLING} --one_stage (the ICL row)"
            )
        if heads.cross_num_hidden_layers != cross_num_hidden_layers:
            raise ConfigError(
                f"--cross_num_hidden_layers {cross_num_hidden_layers}, but the PMD head in {self.path} has "
                f"{heads.cross_num_hidden_layers}; pass --cross_num_hidden_layers {heads.cross_num_hidden_layers}"
            )
        if recons_feat and not heads.recons_feat:
            raise ConfigError(
                f"--recons_feat, but {self.path} has no PFR weights ('recons_weights.*'): it is an ICL+PMD "
                "checkpoint; drop --recons_feat"
            )
        if heads.recons_feat and not recons_feat:
            notes.append(f"{self.path} also holds PFR weights (the ICL+PMD+PFR row); pass --recons_feat to say so")
        return {"recons_feat": False}, notes


def export_model(model: torch.nn.Module, config: dict, args: dict, final_losses: dict | None = None) -> dict:
    """The model file of our format (`model.pt`): fp32 weights, the RICEConfig, the training flags and,
    from a finished run, its last logged losses (evaluation uses them to warn about an untrained PMD)."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    exported = {"format": OUR_FORMAT, "model": state, "model_config": config, "args": args}
    if final_losses:
        exported["final_losses"] = dict(final_losses)
    return exported


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read `path`, detect its format, and return its tensors under our names."""
    path = Path(path)
    obj = _read_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found a {type(obj).__name__}")

    extra: dict = {}
    model_config: dict | None = None
    if obj.get("format") == OUR_FORMAT:
        state = _require_state_dict(obj.get("model"), path, "the 'model' entry")
        extra = {k: v for k, v in obj.items() if k != "model"}
        model_config = obj.get("model_config")
        if model_config is not None and not isinstance(model_config, dict):
            raise CheckpointError(f"{path}: 'model_config' should be a dict, found a {type(model_config).__name__}")
        fmt = "ours"
    else:
        if "model" in obj and isinstance(obj["model"], dict):  # v2 training checkpoint
            obj = obj["model"]
        state = _require_state_dict(obj, path, "the file")
        fmt = _detect_state_dict_format(state, path)

    visual, heads_state, text = _split_keys(state, fmt, path)
    vision = _vision_config(visual, model_config, path)
    _check_visual_keys(visual, vision, path, ENCODER_PREFIX[fmt])
    heads = _heads_config(heads_state, vision, model_config, path, strict_names=fmt != "ours")
    return LoadedCheckpoint(
        path=str(path),
        format=fmt,
        vision=vision,
        visual_state=visual,
        heads_state=heads_state,
        heads=heads,
        text_init=_text_init(text),
        video_pooling=(model_config or {}).get("video_pooling", "v2" if fmt == "rice_v2" else "v1"),
        extra=extra,
    )


# --- reading the file -------------------------------------------------------------


def _read_file(path: Path) -> object:
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt")
                       or p.name.startswith("pytorch_model.bin"))
        hint = f" (it holds {', '.join(found[:5])})" if found else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}; pass the file itself, e.g. "
                              f"{path / (found[0] if found else 'model.pt')}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path} (check the path or download it first)")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # the only reader of OpenAI's archive, deprecated or not
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as err:  # noqa: BLE001 - any failure means an unreadable archive
            raise CheckpointError(f"{path}: looks like a TorchScript archive but cannot be loaded: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise CheckpointError(
                f"{path}: holds pickled Python objects ({unsafe.group(1)}) besides tensors and containers, "
                "which are not loaded since that could run code; re-save just the state dict with "
                "torch.save(model.state_dict(), ...)"
            ) from err
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or another file type): "
            f"{type(err).__name__}: {str(err)[:200]}"
        ) from err


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold `<name>/constants.pkl` and `<name>/code/`; torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return any(name.endswith("constants.pkl") for name in names) and any("/code/" in name for name in names)


def _require_state_dict(obj: object, path: Path, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: {what} is not a non-empty state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} has entries that are not tensors: {_first(bad)}")
    return obj


def _detect_state_dict_format(state: dict[str, Tensor], path: Path) -> str:
    if any(k.startswith("module.") for k in state):
        return "rice_v2"
    if any(k.startswith("clip.") for k in state):
        return "rice_v1"
    if "visual.conv1.weight" in state:
        return "ours" if any(k.startswith(HEAD_PREFIXES) for k in state) else "openai"
    raise CheckpointError(
        f"{path}: no CLIP vision encoder found (looked for 'visual.conv1.weight', 'clip.visual.conv1.weight' "
        f"and 'module.image_encoder.model.conv1.weight'); first keys: {_first(list(state))}"
    )


# --- sorting keys into encoder, heads and text tower ------------------------------


def _split_keys(
    state: dict[str, Tensor], fmt: str, path: Path
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Return (visual, heads, text) dicts under our names, floating tensors in fp32."""
    parts: dict[str, dict[str, Tensor]] = {"visual": {}, "heads": {}, "text": {}, "v2_heads": {}, "unexpected": {}}
    for key, tensor in state.items():
        kind, name = _classify(key, fmt)
        parts[kind][name] = tensor.float() if tensor.is_floating_point() else tensor
    if parts["unexpected"]:
        raise CheckpointError(f"{path}: unexpected keys for a {fmt} checkpoint: {_first(list(parts['unexpected']))}")
    if parts["text"]:
        logger.info("%s: ignored %d CLIP text-tower keys (not used by RICE)", path, len(parts["text"]))
    if parts["v2_heads"]:
        logger.info("%s: ignored %d v2 head keys under '%s' (not used)", path, len(parts["v2_heads"]), V2_HEADS_PREFIX)
    return parts["visual"], parts["heads"], parts["text"]


def _classify(key: str, fmt: str) -> tuple[str, str]:
    """Map a file key to (kind, our name); kind is visual, heads, text, v2_heads or unexpected."""
    if fmt == "rice_v2":
        if key.startswith(V2_ENCODER_PREFIX):
            return "visual", key.removeprefix(V2_ENCODER_PREFIX)
        if key.startswith(V2_HEADS_PREFIX):
            name = key.removeprefix(V2_HEADS_PREFIX)
            for theirs, ours in V2_HEAD_NAMES.items():
                if name.startswith(theirs):
                    return "heads", ours + name.removeprefix(theirs)
            return "v2_heads", key
        return "unexpected", key
    if fmt == "rice_v1":
        if key.startswith("clip.visual."):
            return "visual", key.removeprefix("clip.visual.")
        if key.startswith("clip.") and _is_text_key(key.removeprefix("clip.")):
            return "text", key.removeprefix("clip.")
        if key.startswith(HEAD_PREFIXES):
            return "heads", key
        return "unexpected", key
    # "openai" and "ours" keep OpenAI's names at the top level.
    if key.startswith("visual."):
        return "visual", key.removeprefix("visual.")
    if fmt == "ours" and key.startswith(HEAD_PREFIXES + V2_OUR_PREFIXES):
        return "heads", key
    if fmt == "openai" and (_is_text_key(key) or key in OPENAI_METADATA):
        return "text", key
    return "unexpected", key


def _is_text_key(name: str) -> bool:
    return name in TEXT_NAMES or name.startswith(TEXT_PREFIXES)


# --- architecture from shapes -----------------------------------------------------


def _vision_config(visual: dict[str, Tensor], model_config: dict | None, path: Path) -> VisionConfig:
    """Infer the encoder shape (docs/checkpoints.md); for our own files prefer the saved config."""
    for key in ("conv1.weight", "positional_embedding", "proj"):
        if key not in visual:
            raise CheckpointError(f"{path}: missing the encoder's '{key}' (and maybe more)")
    width, _, patch, _ = visual["conv1.weight"].shape
    grid = round((visual["positional_embedding"].shape[0] - 1) ** 0.5)
    blocks = {int(m.group(1)) for k in visual if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    inferred = VisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=len(blocks),
        heads=max(1, width // 64),
        embed_dim=visual["proj"].shape[1],
    )
    saved = (model_config or {}).get("vision")
    if saved is None:
        return inferred
    try:
        config = VisionConfig(**saved)
    except TypeError as err:
        raise CheckpointError(f"{path}: model_config['vision'] is not a VisionConfig: {err}") from err
    differing = [f for f in ("image_size", "patch_size", "width", "layers", "embed_dim")
                 if getattr(config, f) != getattr(inferred, f)]
    if differing:
        raise CheckpointError(f"{path}: model_config['vision'] disagrees with the tensor shapes in {differing}")
    return config


def _check_visual_keys(visual: dict[str, Tensor], vision: VisionConfig, path: Path, prefix: str) -> None:
    """Strict check of names and shapes against the encoder built on the meta device.

    `prefix` is the encoder's prefix in the file, so errors name the file's keys.
    """
    try:
        with torch.device("meta"):
            expected = {k: v.shape for k, v in VisionTransformer(vision).state_dict().items()}
    except ValueError as err:
        raise CheckpointError(f"{path}: inferred encoder {vision} cannot be built: {err}") from err
    missing = [prefix + k for k in expected if k not in visual]
    unexpected = [prefix + k for k in visual if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: encoder keys do not match {vision}: missing {_first(missing)}, unexpected {_first(unexpected)}"
        )
    wrong = [f"{prefix}{k} {tuple(visual[k].shape)} != {tuple(s)}" for k, s in expected.items() if visual[k].shape != s]
    if wrong:
        raise CheckpointError(f"{path}: encoder tensors with the wrong shape: {_first(wrong)}")


def _heads_config(
    heads: dict[str, Tensor], vision: VisionConfig, model_config: dict | None, path: Path, strict_names: bool
) -> HeadsConfig | None:
    """Infer the PMD/PFR heads from their keys (docs/checkpoints.md); check v1 names exactly."""
    if not heads:
        if model_config and model_config.get("sim_header", "mean_pooling") != "mean_pooling":
            raise CheckpointError(f"{path}: model_config says {model_config['sim_header']} but no head keys found")
        return None
    if any(k.startswith(V2_OUR_PREFIXES) for k in heads):
        return _v2_heads_config(heads, vision, model_config, path)
    self_blocks = {int(m.group(1)) for k in heads if (m := re.match(r"cross\.transformer\.resblocks\.(\d+)\.", k))}
    has_cross = any(k.startswith("cross.transformer.cross_attention.") for k in heads)
    recons = any(k.startswith("recons_weights.") for k in heads)
    conv = heads.get("recons_weights.conv.0.weight")
    config = HeadsConfig(
        sim_header="cross_attention" if any(k.startswith("cross.") for k in heads) else "mean_pooling",
        cross_num_hidden_layers=len(self_blocks) + int(has_cross),
        recons_feat=recons,
        pmd_heads=conv.shape[1] if conv is not None else 8,
    )
    if model_config:
        for name in ("sim_header", "cross_num_hidden_layers", "recons_feat", "pmd_heads"):
            if name in model_config and model_config[name] != getattr(config, name):
                if name == "pmd_heads" and not recons:  # not visible in the tensors without PFR
                    config.pmd_heads = model_config[name]
                    continue
                raise CheckpointError(
                    f"{path}: model_config {name}={model_config[name]!r} disagrees with the head tensors "
                    f"({getattr(config, name)!r})"
                )
    if strict_names:
        expected = _v1_head_keys(len(self_blocks), has_cross, recons)
        missing = sorted(expected - heads.keys())
        unexpected = sorted(heads.keys() - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: PMD/PFR keys do not match the v1 layout: missing {_first(missing)}, "
                f"unexpected {_first(unexpected)}"
            )
    pmd_width = heads.get("cross.embeddings.position_embeddings.weight")
    if pmd_width is not None and pmd_width.shape[-1] != vision.embed_dim:
        raise CheckpointError(
            f"{path}: PMD width {pmd_width.shape[-1]} differs from the encoder's embed dim {vision.embed_dim}"
        )
    return config


def _v2_heads_config(heads: dict[str, Tensor], vision: VisionConfig, model_config: dict | None,
                     path: Path) -> HeadsConfig:
    """The v2 heads (modules/heads_v2.py): decoder layers, `vim`, `rec`, `logit_scale`."""
    layers = {int(m.group(1)) for k in heads if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}
    has_pmd = "vim.weight" in heads
    if has_pmd and (not layers or len(layers) % 2):
        raise CheckpointError(f"{path}: the v2 PMD needs (self, cross) layer pairs; found layers {sorted(layers)}")
    pooler = heads.get("decoder.pooler.dense.weight")
    if pooler is not None and pooler.shape[-1] != vision.width:
        raise CheckpointError(f"{path}: v2 decoder width {pooler.shape[-1]} differs from the encoder width "
                              f"{vision.width}")
    conv = heads.get("rec.0.weight")
    stored_heads = (model_config or {}).get("pmd_heads", 8)
    return HeadsConfig(sim_header="cross_attention" if has_pmd else "mean_pooling",
                       cross_num_hidden_layers=len(layers) if has_pmd else 2, recons_feat=conv is not None,
                       pmd_heads=conv.shape[1] * 2 // max(len(layers), 2) if conv is not None else stored_heads,
                       head_style="v2")


def _v1_head_keys(self_blocks: int, has_cross: bool, recons: bool) -> set[str]:
    """Every key of the v1 PMD/PFR heads (docs/checkpoints.md) for the given depth."""
    def wb(*names: str) -> list[str]:
        return [f"{n}.{p}" for n in names for p in ("weight", "bias")]

    mlp_ln = wb("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj")
    keys = ["cross.embeddings.position_embeddings.weight", *wb("cross.pooler.ln_pool", "cross.pooler.dense")]
    keys += wb("similarity_dense")
    for i in range(self_blocks):
        block = f"cross.transformer.resblocks.{i}."
        keys += [block + k for k in ("attn.in_proj_weight", "attn.in_proj_bias", *wb("attn.out_proj"), *mlp_ln)]
    if has_cross:
        block = "cross.transformer.cross_attention."
        keys += [block + k for k in (*wb("attn.query", "attn.key", "attn.value"), *mlp_ln)]
    if recons:
        keys += wb("recons_weights.conv.0", "recons_weights.conv.2")
    return set(keys)


def _text_init(text: dict[str, Tensor]) -> dict[str, Tensor]:
    """CLIP text positions and block 0, which initialise the PMD (docs/method.md, PMD)."""
    if "positional_embedding" not in text:
        return {}
    init = {"positional_embedding": text["positional_embedding"]}
    prefix = "transformer.resblocks.0."
    init.update({"resblock0." + k.removeprefix(prefix): v for k, v in text.items() if k.startswith(prefix)})
    return init


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:n])
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"[{shown}]{more}" if keys else "none"
