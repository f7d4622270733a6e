"""Import a released FOCUS checkpoint (detectron2 layout) into our network.

A pure state-dict -> state-dict function with a short, explicit key map (nanoGPT / timm style):
the file is ``{"model": OrderedDict}``; a DDP ``module.`` prefix is stripped; the loss's
``criterion.empty_weight`` (the class weights [1, 1, 0.1], owned by ``training/``) is dropped.
Nothing else is renamed. The reference loader's silent ``pixel_decoder`` rename for dicts
without ``_metadata`` is deliberately not reproduced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from models.build import build_focus
from models.checkpoint import save_checkpoint
from models.config import get_preset, make_card
from models.weights import load_strict, read_state_dict

DROPPED_KEYS = ("criterion.empty_weight",)


def read_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``model_final.pth`` (``{"model": state_dict}``) read without unpickling objects."""
    return read_state_dict(path, container_key="model")


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference names -> ours: strip ``module.``, drop ``DROPPED_KEYS``; nothing else moves."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in DROPPED_KEYS:
            continue
        out[key] = value
    return out


def import_official(
    weights: str | Path, task: str, preset: str, out: str | Path, version: str | None = None
) -> Path:
    """Strictly load ``weights`` into ``preset`` and write our checkpoint directory
    (``version``: the card's; None lets ``save_checkpoint`` stamp date + weights hash)."""
    config = get_preset(preset)
    model = build_focus(config)
    state = convert_official_state_dict(read_official_file(weights))
    load_strict(model, state, str(weights))
    card = make_card(
        task,
        preset,
        config,
        provenance={"imported_from": Path(weights).name, "format": "detectron2"},
    )
    if version is not None:
        card = dataclasses.replace(card, version=version)
    return save_checkpoint(model, card, out)
