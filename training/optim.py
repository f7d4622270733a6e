"""Optimiser pieces of the reference solver: per-module AdamW parameter groups, the poly
learning-rate schedule and mixed-precision selection.

Reference: FOCUS ``train_net.py`` ``build_optimizer`` and the configs' ``SOLVER`` block
(OFFICIAL_TRAINING.md §1).

Parameter groups are decided per module, from the module's own trainable parameters:

* lr x ``backbone_multiplier`` (0.1) when the module's name contains "backbone" (the whole
  DINOv2 + adapter + edge stack);
* weight decay 0 for the parameters of normalisation modules (BN, SyncBN, GN, LN, IN, LRN) and
  of ``nn.Embedding`` (decoder ``query_feat``, ``query_embed``, ``level_embed``);
* weight decay for everything else, biases included, *and* ``pos_embed``, ``cls_token``, the
  backbone's and pixel decoder's ``level_embed`` parameters and the layer-scale / injector
  ``gamma``s. That last part is a reference quirk (its ``absolute_pos_embed`` exemption matches
  nothing) and the default here; ``decay_embeddings=False`` exempts them as ViT recipes usually do.

Groups with equal (lr multiplier, weight decay) are merged: the maths is the reference's
one-group-per-parameter AdamW, with fewer groups.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Parameters the reference decays although ViT practice does not (see the module docstring).
EMBEDDING_PARAM_NAMES: frozenset[str] = frozenset(
    {"pos_embed", "cls_token", "level_embed", "gamma", "gamma1", "gamma2"}
)


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    backbone_multiplier: float,
    decay_embeddings: bool = True,
) -> list[dict[str, Any]]:
    """AdamW parameter groups; each group carries ``lr_scale`` (1 or ``backbone_multiplier``)
    and ``weight_decay``. Frozen parameters are left out."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            scale = backbone_multiplier if "backbone" in module_name else 1.0
            wd = weight_decay
            if isinstance(module, NORM_TYPES) or isinstance(module, nn.Embedding):
                wd = 0.0
            if not decay_embeddings and name in EMBEDDING_PARAM_NAMES:
                wd = 0.0
            groups.setdefault((scale, wd), []).append(param)
    return [
        {"params": params, "lr_scale": scale, "weight_decay": wd}
        for (scale, wd), params in groups.items()
    ]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    backbone_multiplier: float,
    decay_embeddings: bool = True,
) -> torch.optim.AdamW:
    """AdamW with torch's default betas and eps (as the reference)."""
    groups = param_groups(
        model,
        weight_decay=weight_decay,
        backbone_multiplier=backbone_multiplier,
        decay_embeddings=decay_embeddings,
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr)


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """detectron2 ``WarmupPolyLR`` without warmup: base * (1 - step / total) ** power.

    ``step`` counts optimiser steps already taken (0 for the first one).
    """
    return base_lr * (1.0 - min(step, total) / total) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA devices that support it, fp16 (with a GradScaler) on older ones,
    off on CPU. ``off``, ``bf16`` and ``fp16`` force a choice (fp16 needs CUDA)."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 mixed precision needs a CUDA device (use bf16 or off)")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
