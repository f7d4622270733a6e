"""Pretrained-weight import for a fresh FOCUS: DINOv2 into the ViT, torchvision ResNet-50 into the
edge prior module. Conversion is a pure state-dict function with a short key map, checked against
every target name and shape before a load that is strict within its subset (STYLE §8).

References: FOCUS ``utils/convert_dinov2.py`` and OFFICIAL_TRAINING.md §4; DINOv2
``dinov2/models/vision_transformer.py`` (checkpoint layout); timm ``_convert_dinov2``.

Target names and shapes are read off the network itself (``models.weights.model_shapes``: the
model built on the meta device), so the SwiGLU width and every other formula live only in
``models/vit.py``; the names are FOCUS's ``D2DINOV2``/``TIMMVisionTransformer`` ones
(OFFICIAL_MODULES.md): ``backbone.{patch_embed.proj, pos_embed, cls_token, blocks.N.*}``.

The key map (the reference's, made explicit): ``blocks.N.ls1.gamma`` -> ``blocks.N.gamma1``,
``ls2`` -> ``gamma2``; chunked checkpoints (``block_chunks > 0``: ``blocks.C.N.*``) ->
``blocks.N.*``;
``register_tokens``, ``mask_token`` and the final ``norm.*`` are dropped (the reference's loader
matches them to nothing: the reg4 ViT is fine-tuned without registers); ``pos_embed`` is resized
bicubically when the checkpoint grid differs from the target's; everything gets ``backbone.``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import FocusConfig
from models.weights import check_state_dict, load_subset, model_shapes, read_state_dict, shapes_of

logger = logging.getLogger(__name__)

DINOV2_DROPPED_KEYS = ("register_tokens", "mask_token", "norm.weight", "norm.bias")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$")
_EDGE_PROJECTION = re.compile(r"^backbone\.edge\.fc\d+\.")  # FOCUS's own 1x1 convs, not ResNet


def _is_vit_key(name: str) -> bool:
    return name in ("backbone.pos_embed", "backbone.cls_token") or name.startswith(
        ("backbone.patch_embed.", "backbone.blocks.")
    )


def vit_target_shapes(config: FocusConfig) -> dict[str, tuple[int, ...]]:
    """Every FOCUS ViT parameter name and shape for ``config``, read off the built network."""
    return model_shapes(config, _is_vit_key)


def resize_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """[1, 1 + G², D] -> [1, 1 + grid², D]: the class position is kept, the G×G patch grid is
    resized bicubically (align_corners=False)."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(f"pos_embed has {patches.shape[1]} patch positions, not a square grid")
    if old == grid:
        return pos_embed
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # [1, D, G, G]
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


def convert_dinov2_to_target(
    sd: Mapping[str, Tensor],
    target_shapes: Mapping[str, tuple[int, ...]],
    prefix: str = "backbone.",
) -> dict[str, Tensor]:
    """Rename a DINOv2 checkpoint to FOCUS names and check it against ``target_shapes``."""
    out: dict[str, Tensor] = {}
    dropped = []
    for key, value in sd.items():
        if key in DINOV2_DROPPED_KEYS:
            dropped.append(key)
            continue
        chunked = _CHUNKED_BLOCK.match(key)
        name = f"blocks.{chunked[1]}.{chunked[2]}" if chunked else key
        name = _LAYER_SCALE.sub(r"blocks.\1.gamma\2", name)
        name = prefix + name
        if name in out:
            raise ValueError(f"two checkpoint keys map to {name} (flat and chunked blocks mixed?)")
        out[name] = value
    pos = prefix + "pos_embed"
    if pos in out and pos in target_shapes and out[pos].dim() == 3:
        grid = math.isqrt(target_shapes[pos][1] - 1)
        out[pos] = resize_pos_embed(out[pos], grid)
    check_state_dict(out, target_shapes, "DINOv2 checkpoint")
    logger.info("DINOv2: %d tensors converted, dropped %s", len(out), dropped)
    return out


def convert_dinov2_state_dict(sd: Mapping[str, Tensor], config: FocusConfig) -> dict[str, Tensor]:
    """DINOv2 original layout -> FOCUS ``backbone.*`` ViT names for ``config`` (pure function)."""
    return convert_dinov2_to_target(sd, vit_target_shapes(config))


def load_dinov2_into(model: nn.Module, path: str | Path) -> None:
    """Load a DINOv2 checkpoint into the ViT of a FOCUS ``model``.

    Strict within the ViT subset (patch_embed, pos_embed, cls_token, blocks) against the model's own
    names and shapes; every other FOCUS parameter keeps its initialisation.
    """
    target = {k: s for k, s in shapes_of(model.state_dict()).items() if _is_vit_key(k)}
    if not target:
        raise ValueError("model has no backbone.{patch_embed,pos_embed,cls_token,blocks} tensors")
    converted = convert_dinov2_to_target(read_state_dict(path), target)
    load_subset(model, converted, set(target), f"DINOv2 weights {path}")


def convert_resnet50_to_target(
    sd: Mapping[str, Tensor],
    target_shapes: Mapping[str, tuple[int, ...]],
    prefix: str = "backbone.edge.",
) -> dict[str, Tensor]:
    """torchvision ResNet-50 names -> ``backbone.edge.*``; the classifier ``fc.*`` is dropped."""
    out = {prefix + k: v for k, v in sd.items() if not k.startswith("fc.")}
    check_state_dict(out, target_shapes, "ResNet-50 checkpoint")
    return out


def load_resnet50_into_edge(model: nn.Module, path: str | Path) -> None:
    """Load torchvision ``resnet50`` IMAGENET1K_V1 weights (BN statistics included, no ``fc``) into
    ``backbone.edge``; the edge module's own ``fc1-4`` projections keep their initialisation."""
    target = {
        k: s
        for k, s in shapes_of(model.state_dict()).items()
        if k.startswith("backbone.edge.") and not _EDGE_PROJECTION.match(k)
    }
    if not target:
        raise ValueError("model has no backbone.edge.* tensors")
    converted = convert_resnet50_to_target(read_state_dict(path), target)
    load_subset(model, converted, set(target), f"ResNet-50 weights {path} (backbone.edge)")
