"""Our checkpoint directory: ``focus.json`` (model card) + ``model.safetensors``.

Loading never unpickles. Saving is atomic: files are written into a temporary sibling
directory which then replaces the target, so a crash mid-write leaves the old checkpoint (or
nothing), never a broken one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.build import build_focus
from models.config import ModelCard
from models.contract import WEIGHTS_FILE
from models.weights import CheckpointError, load_strict, load_subset

WEIGHTS = WEIGHTS_FILE
__all__ = [
    "CheckpointError",
    "TRAINING_ONLY_MARKERS",
    "WEIGHTS",
    "is_training_only",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "save_inference_weights",
    "weights_version",
]

UNVERSIONED = "0"  # ModelCard's default: a card nobody stamped

# Modules that eval-mode inference never runs (DESIGN "The model"): the CLIP refiner and its
# projection heads (training-only distillation), and the box head whose output only a training
# loss reads. An inference checkpoint (the bundled demo models) leaves them out; loading one
# keeps their freshly initialised values, which is what fine-tuning from it starts with.
TRAINING_ONLY_MARKERS = ("clip_refiner", "text_embed", "image_embed", "bbox_embed")


def is_training_only(name: str) -> bool:
    """Whether the state-dict entry ``name`` belongs to a training-only module."""
    return any(f"{marker}." in name for marker in TRAINING_ONLY_MARKERS)


def weights_version(state: Mapping[str, torch.Tensor], now: float | None = None) -> str:
    """``YYYYMMDD-<8 hex>``: the UTC date and a hash of every tensor's name, dtype, shape and
    bytes, so two different models never share a version and the same weights always hash
    alike (the date says when they were written)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    day = time.strftime("%Y%m%d", time.gmtime(now))
    return f"{day}-{digest.hexdigest()[:8]}"


def save_checkpoint(model: nn.Module, card: ModelCard, directory: str | Path) -> Path:
    """Write ``directory/{focus.json, model.safetensors}`` atomically; returns the directory.

    A card without a version (``"0"``) gets :func:`weights_version`, which ``GET /tasks`` and
    ``focus_model_info`` show; an explicit one (``--version``) is kept.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if card.version == UNVERSIONED:
            card = dataclasses.replace(card, version=weights_version(state))
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


def save_inference_weights(model: nn.Module, path: str | Path, card: ModelCard) -> Path:
    """Write ``model``'s weights without its training-only modules to ``path`` (safetensors)."""
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not is_training_only(k)
    }
    save_file(state, str(path), metadata={"format": "pt", "task": card.task, "inference": "1"})
    return Path(path)


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """-> (network in eval mode on ``device``, its model card).

    The training-only modules' tensors may be absent (an inference checkpoint); every other
    tensor must be there with its shape.
    """
    directory = Path(directory)
    card = ModelCard.load(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    model = build_focus(card.config)
    load_weights(model, directory)
    return model.to(device).eval(), card


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load ``directory/model.safetensors`` into ``model`` (built from the directory's card);
    the training-only tensors may be absent and then keep ``model``'s values."""
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    state = load_file(str(weights))
    absent = [k for k in model.state_dict() if k not in state and is_training_only(k)]
    if absent:
        load_subset(model, state, set(model.state_dict()) - set(absent), str(weights))
    else:
        load_strict(model, state, str(weights))
