"""FOCUS configuration schema, presets, and the ``focus.json`` model card.

Torch-free: the service reads model cards without importing torch. One frozen dataclass
describes a network; presets are plain named instances in ``PRESETS`` (no registry). Field
names follow the reference config keys they mirror (``configs/*/cod_dinov2_large.yaml``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.contract import CARD_FILE
from models.precision import (
    CARD_KEY,
    Variant,
    variants_from_card_dict,
    variants_to_card_dict,
)

SCHEMA_VERSION = 2  # 2: input geometry only under "input" (1 repeated it in "config")
READABLE_SCHEMAS = (1, 2)
# FocusConfig fields that focus.json keeps under "input" (with their key there), not "config".
_GEOMETRY_KEYS = {
    "input_short_side": "short_side",
    "input_max_size": "max_size",
    "size_divisibility": "size_divisibility",
}

# ImageNet statistics on the 0..255 scale, as in the reference configs (RGB order).
PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class FocusConfig:
    """Every hyper-parameter that changes the network's parameters or its function."""

    # DINOv2 ViT
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_type: str = "mlp"  # "mlp" (fc1/fc2, GELU) or "swiglu" (w12/w3)
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pretrain_size: int = 518  # pos_embed grid = pretrain_size // patch_size (37 for 518)
    drop_path_rate: float = 0.4  # ViT stochastic depth and extractor DropPath (training only)
    # ViT-Adapter interaction stack
    interaction_indexes: tuple[tuple[int, int], ...] = ((0, 5), (6, 11), (12, 17), (18, 23))
    deform_num_heads: int = 16
    deform_points: int = 4
    deform_ratio: float = 0.5  # value_proj width = embed_dim * deform_ratio
    cffn_ratio: float = 0.25
    use_extra_extractor: bool = True
    # Edge prior module (ResNet-style, Bottleneck blocks)
    edge_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    edge_width: int = 64  # stem width; stage widths are width * (1, 2, 4, 8), expansion 4
    # Mask2Former pixel decoder
    conv_dim: int = 256
    mask_dim: int = 256
    enc_layers: int = 6
    enc_heads: int = 8
    enc_points: int = 4
    enc_ffn_dim: int = 1024
    norm_groups: int = 32
    # Masked-attention transformer decoder
    hidden_dim: int = 256
    dec_layers: int = 9  # reference DEC_LAYERS 10 minus the learnable-query head
    dec_heads: int = 8
    dec_ffn_dim: int = 2048
    num_queries: int = 2
    num_classes: int = 2  # foreground, background (+1 no-object column in the logits)
    # CLIP refiner (training only; kept so reference checkpoints load by name)
    with_clip: bool = True
    clip_embed_dim: int = 512
    clip_image_size: int = 224
    clip_patch_size: int = 16
    clip_vision_width: int = 768
    clip_vision_layers: int = 12
    clip_vision_heads: int = 12
    clip_text_width: int = 512
    clip_text_layers: int = 12
    clip_text_heads: int = 8
    clip_context_length: int = 77
    clip_vocab_size: int = 49408
    clip_mask_prompt_depth: int = 3
    # Input geometry (test-time preprocessing)
    input_short_side: int = 512
    input_max_size: int = 2048
    size_divisibility: int = 32

    def __post_init__(self) -> None:
        if self.ffn_type not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_type must be 'mlp' or 'swiglu', got {self.ffn_type!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        value_dim = int(self.embed_dim * self.deform_ratio)
        if value_dim % self.deform_num_heads:
            raise ValueError("embed_dim * deform_ratio must be divisible by deform_num_heads")
        last = self.interaction_indexes[-1][1]
        if last != self.depth - 1:
            raise ValueError(f"interaction_indexes must end at block {self.depth - 1}, got {last}")
        for dim, groups in ((self.conv_dim, self.norm_groups),):
            if dim % groups:
                raise ValueError(f"conv_dim {dim} is not divisible by norm_groups {groups}")
        if self.size_divisibility % 32:
            raise ValueError("size_divisibility must be a multiple of 32 (the stride-32 level)")

    @property
    def pos_grid(self) -> int:
        return self.pretrain_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocusConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FocusConfig fields: {unknown}")
        values = dict(data)
        if "interaction_indexes" in values:
            values["interaction_indexes"] = tuple(tuple(p) for p in values["interaction_indexes"])
        if "edge_layers" in values:
            values["edge_layers"] = tuple(values["edge_layers"])
        return cls(**values)


def _large() -> FocusConfig:
    return FocusConfig()


def _giant() -> FocusConfig:
    return FocusConfig(
        embed_dim=1536,
        depth=40,
        num_heads=24,
        ffn_type="swiglu",
        deform_num_heads=24,
        interaction_indexes=((0, 9), (10, 19), (20, 29), (30, 39)),
    )


def _base() -> FocusConfig:
    return FocusConfig(
        embed_dim=768,
        depth=12,
        num_heads=12,
        deform_num_heads=12,
        interaction_indexes=((0, 2), (3, 5), (6, 8), (9, 11)),
    )


def _small() -> FocusConfig:
    return FocusConfig(
        embed_dim=384,
        depth=12,
        num_heads=6,
        deform_num_heads=6,
        interaction_indexes=((0, 2), (3, 5), (6, 8), (9, 11)),
    )


def _tiny() -> FocusConfig:
    """Every component, scaled down to train on 2 CPU cores and ship as a ~MB demo model."""
    return FocusConfig(
        embed_dim=96,
        depth=4,
        num_heads=3,
        pretrain_size=518,
        interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)),
        deform_num_heads=3,
        edge_layers=(1, 1, 1, 1),
        edge_width=16,
        conv_dim=64,
        mask_dim=64,
        enc_layers=2,
        enc_heads=4,
        enc_ffn_dim=256,
        hidden_dim=64,
        dec_layers=3,
        dec_heads=4,
        dec_ffn_dim=256,
        clip_embed_dim=64,
        clip_vision_width=64,
        clip_vision_layers=2,
        clip_vision_heads=2,
        clip_text_width=64,
        clip_text_layers=2,
        clip_text_heads=2,
        input_short_side=256,
        input_max_size=1024,
    )


PRESETS: dict[str, FocusConfig] = {
    "tiny": _tiny(),
    "small": _small(),
    "base": _base(),
    "large": _large(),
    "giant": _giant(),
}


def get_preset(name: str) -> FocusConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class ModelCard:
    """The ``focus.json`` beside every checkpoint, ONNX model and engine (schema 2, reads 1).

    Everything a consumer needs to preprocess inputs and interpret outputs, without torch.
    """

    task: str
    preset: str
    config: FocusConfig
    schema_version: int = SCHEMA_VERSION
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    prompts: tuple[str, str] = ("", "")
    version: str = "0"
    provenance: dict[str, Any] = field(default_factory=dict)
    # precision variants beside the fp32 model and their accuracy gates (models/precision.py)
    variants: tuple[Variant, ...] = ()

    @property
    def input_short_side(self) -> int:
        return self.config.input_short_side

    @property
    def input_max_size(self) -> int:
        return self.config.input_max_size

    @property
    def size_divisibility(self) -> int:
        return self.config.size_divisibility

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "preset": self.preset,
            "version": self.version,
            "input": {
                "short_side": self.config.input_short_side,
                "max_size": self.config.input_max_size,
                "size_divisibility": self.config.size_divisibility,
                "pixel_mean": list(self.pixel_mean),
                "pixel_std": list(self.pixel_std),
                "channel_order": "RGB",
            },
            "prompts": list(self.prompts),
            "config": {k: v for k, v in self.config.to_dict().items() if k not in _GEOMETRY_KEYS},
            "provenance": self.provenance,
            **({CARD_KEY: variants_to_card_dict(self.variants)} if self.variants else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        schema = data.get("schema_version")
        if schema not in READABLE_SCHEMAS:
            raise ValueError(
                f"unsupported focus.json schema_version {schema!r} (this version reads "
                f"{', '.join(map(str, READABLE_SCHEMAS))})"
            )
        inp = data["input"]
        config = dict(data["config"])
        if schema >= 2:
            repeated = sorted(set(config) & set(_GEOMETRY_KEYS))
            if repeated:
                raise ValueError(f"focus.json repeats {repeated} in 'config'; they live in 'input'")
            config.update({field: inp[key] for field, key in _GEOMETRY_KEYS.items()})
        return cls(
            task=data["task"],
            preset=data["preset"],
            version=str(data.get("version", "0")),
            config=FocusConfig.from_dict(config),
            pixel_mean=tuple(inp["pixel_mean"]),
            pixel_std=tuple(inp["pixel_std"]),
            prompts=tuple(data.get("prompts", ("", ""))),
            provenance=dict(data.get("provenance", {})),
            variants=variants_from_card_dict(data),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CARD_FILE
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> ModelCard:
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / CARD_FILE
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a valid focus.json ({exc})") from exc


def make_card(
    task: str, preset: str, config: FocusConfig | None = None, **kwargs: Any
) -> ModelCard:
    """A card for ``task`` with the task's prompts filled in from the task registry."""
    from models.tasks import get_task

    t = get_task(task)
    return ModelCard(
        task=t.name,
        preset=preset,
        config=config if config is not None else get_preset(preset),
        prompts=t.prompts,
        **kwargs,
    )
