"""Our checkpoint directory: ``focus.json`` (model card) + ``model.safetensors``.

Loading never unpickles. Saving is atomic: files are written into a temporary sibling
directory which then replaces the target, so a crash mid-write leaves the old checkpoint (or
nothing), never a broken one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.build import build_focus
from models.config import ModelCard
from models.contract import WEIGHTS_FILE
from models.weights import CheckpointError, load_strict

WEIGHTS = WEIGHTS_FILE
__all__ = ["CheckpointError", "WEIGHTS", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(model: nn.Module, card: ModelCard, directory: str | Path) -> Path:
    """Write ``directory/{focus.json, model.safetensors}`` atomically; returns the directory."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "task": card.task})
        card.save(tmp)
        with open(tmp / WEIGHTS, "rb") as f:
            os.fsync(f.fileno())
        # mkdtemp creates 0700; give the checkpoint the permissions of an ordinary directory
        # (umask applies) so a service running as another user can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~umask)
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
        os.replace(tmp, target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """-> (network in eval mode on ``device``, its model card)."""
    directory = Path(directory)
    card = ModelCard.load(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    model = build_focus(card.config)
    load_strict(model, load_file(str(weights)), str(weights))
    return model.to(device).eval(), card
