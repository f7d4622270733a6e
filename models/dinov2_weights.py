"""Pretrained-weight import for a fresh FOCUS: DINOv2 into the ViT, torchvision ResNet-50 into the
edge prior module. Conversion is a pure state-dict function with a short key map, checked against
every target name and shape before a load that is strict within its subset (STYLE §8).

References: FOCUS ``utils/convert_dinov2.py`` and OFFICIAL_TRAINING.md §4; DINOv2
``dinov2/models/vision_transformer.py`` (checkpoint layout); timm ``_convert_dinov2``.

Target names (FOCUS ``D2DINOV2``/``TIMMVisionTransformer``, see OFFICIAL_MODULES.md), D = embed_dim,
p = patch_size, g = config.pos_grid, H = int(D * mlp_ratio):

    backbone.patch_embed.proj.{weight [D,3,p,p], bias [D]}
    backbone.pos_embed [1, g²+1, D]          backbone.cls_token [1, 1, D]
    backbone.blocks.N.norm1.{weight,bias} [D]   backbone.blocks.N.norm2.{weight,bias} [D]
    backbone.blocks.N.attn.qkv.{weight [3D,D], bias [3D]}
    backbone.blocks.N.attn.proj.{weight [D,D], bias [D]}
    backbone.blocks.N.gamma1 [D]             backbone.blocks.N.gamma2 [D]
    mlp:    backbone.blocks.N.mlp.fc1.{weight [H,D], bias [H]}, mlp.fc2.{weight [D,H], bias [D]}
    swiglu: backbone.blocks.N.mlp.w12.{weight [2h,D], bias [2h]}, mlp.w3.{weight [D,h], bias [D]},
            h = (int(H * 2/3) + 7) // 8 * 8 (DINOv2's SwiGLUFFNFused)

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
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import FocusConfig

logger = logging.getLogger(__name__)

DINOV2_DROPPED_KEYS = ("register_tokens", "mask_token", "norm.weight", "norm.bias")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$")
_EDGE_PROJECTION = re.compile(r"^backbone\.edge\.fc\d+\.")  # FOCUS's own 1x1 convs, not ResNet


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` from safetensors or ``torch.load(weights_only=True)``; never
    unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise ValueError(
                f"{path} is a TorchScript archive (e.g. OpenAI's clip.load file), which "
                "torch.load(weights_only=True) cannot read. Convert it once in a trusted "
                "environment: torch.jit.load(path, map_location='cpu').state_dict(), saved with "
                "safetensors.torch.save_file (or torch.save of that plain dict)."
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True) (it pickles more than "
            f"tensors, or is not a torch file): {exc}"
        ) from exc
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        found = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: expected a flat dict of tensors, found {found}")
    return dict(obj)


def vit_target_shapes(config: FocusConfig, prefix: str = "backbone.") -> dict[str, tuple[int, ...]]:
    """Every FOCUS ViT parameter name and shape for ``config`` (the table in the module doc)."""
    d, p, g = config.embed_dim, config.patch_size, config.pos_grid
    hidden = int(d * config.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
        "pos_embed": (1, g * g + 1, d),
        "cls_token": (1, 1, d),
    }
    if config.ffn_type == "mlp":
        ffn = {
            "fc1.weight": (hidden, d),
            "fc1.bias": (hidden,),
            "fc2.weight": (d, hidden),
            "fc2.bias": (d,),
        }
    else:
        h = (int(hidden * 2 / 3) + 7) // 8 * 8
        ffn = {"w12.weight": (2 * h, d), "w12.bias": (2 * h,), "w3.weight": (d, h), "w3.bias": (d,)}
    for n in range(config.depth):
        block = {
            "norm1.weight": (d,),
            "norm1.bias": (d,),
            "attn.qkv.weight": (3 * d, d),
            "attn.qkv.bias": (3 * d,),
            "attn.proj.weight": (d, d),
            "attn.proj.bias": (d,),
            "gamma1": (d,),
            "norm2.weight": (d,),
            "norm2.bias": (d,),
            **{f"mlp.{k}": v for k, v in ffn.items()},
            "gamma2": (d,),
        }
        shapes.update({f"blocks.{n}.{k}": v for k, v in block.items()})
    return {prefix + k: v for k, v in shapes.items()}


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


def _check(
    converted: Mapping[str, Tensor], target: Mapping[str, tuple[int, ...]], what: str
) -> None:
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(target[k])}"
        for k in set(converted) & set(target)
        if tuple(converted[k].shape) != tuple(target[k])
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{what} does not fit the model ({len(converted)} converted tensors, {len(target)} "
            f"expected): missing {missing}, unexpected {unexpected}, shape mismatches {mismatched}"
        )


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
    _check(out, target_shapes, "DINOv2 checkpoint")
    logger.info("DINOv2: %d tensors converted, dropped %s", len(out), dropped)
    return out


def convert_dinov2_state_dict(sd: Mapping[str, Tensor], config: FocusConfig) -> dict[str, Tensor]:
    """DINOv2 original layout -> FOCUS ``backbone.*`` ViT names for ``config`` (pure function)."""
    return convert_dinov2_to_target(sd, vit_target_shapes(config))


def _is_vit_key(name: str) -> bool:
    return name in ("backbone.pos_embed", "backbone.cls_token") or name.startswith(
        ("backbone.patch_embed.", "backbone.blocks.")
    )


def _load_subset(model: nn.Module, converted: dict[str, Tensor], subset: set[str]) -> None:
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys or subset & set(result.missing_keys):  # internal invariant
        raise RuntimeError(f"subset load left {result}")


def load_dinov2_into(model: nn.Module, path: str | Path) -> None:
    """Load a DINOv2 checkpoint into the ViT of a FOCUS ``model``.

    Strict within the ViT subset (patch_embed, pos_embed, cls_token, blocks) against the model's own
    names and shapes; every other FOCUS parameter keeps its initialisation.
    """
    target = {k: tuple(v.shape) for k, v in model.state_dict().items() if _is_vit_key(k)}
    if not target:
        raise ValueError("model has no backbone.{patch_embed,pos_embed,cls_token,blocks} tensors")
    converted = convert_dinov2_to_target(read_state_dict(path), target)
    _load_subset(model, converted, set(target))
    logger.info("loaded %d DINOv2 tensors from %s", len(converted), path)


def convert_resnet50_to_target(
    sd: Mapping[str, Tensor],
    target_shapes: Mapping[str, tuple[int, ...]],
    prefix: str = "backbone.edge.",
) -> dict[str, Tensor]:
    """torchvision ResNet-50 names -> ``backbone.edge.*``; the classifier ``fc.*`` is dropped."""
    out = {prefix + k: v for k, v in sd.items() if not k.startswith("fc.")}
    _check(out, target_shapes, "ResNet-50 checkpoint")
    return out


def load_resnet50_into_edge(model: nn.Module, path: str | Path) -> None:
    """Load torchvision ``resnet50`` IMAGENET1K_V1 weights (BN statistics included, no ``fc``) into
    ``backbone.edge``; the edge module's own ``fc1-4`` projections keep their initialisation."""
    target = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith("backbone.edge.") and not _EDGE_PROJECTION.match(k)
    }
    if not target:
        raise ValueError("model has no backbone.edge.* tensors")
    converted = convert_resnet50_to_target(read_state_dict(path), target)
    _load_subset(model, converted, set(target))
    logger.info("loaded %d ResNet-50 tensors from %s into backbone.edge", len(converted), path)
