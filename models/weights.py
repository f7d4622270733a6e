"""Reading and checking weights: one reader, one diff, one exception, for every import.

Our checkpoints, the released FOCUS ``.pth`` files, DINOv2, torchvision ResNet-50 and OpenAI CLIP
weights all go through :func:`read_state_dict` (safetensors, or ``torch.load(weights_only=True)``:
nothing is ever unpickled) and :func:`check_state_dict` (every missing, unexpected and mis-shaped
name in one :class:`WeightsMismatchError`). The names and shapes a file must have come from the
network itself, built on the meta device (:func:`model_shapes`), never from a hand-written table.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from models.config import FocusConfig

logger = logging.getLogger(__name__)

SHOWN = 20  # names listed per kind in an error message (the counts are always complete)


class CheckpointError(ValueError):
    """A weights file that cannot be used: unreadable, unsafe, or not for this network."""


class WeightsMismatchError(CheckpointError):
    """A state dict whose names or shapes do not fit its target; names every difference."""

    def __init__(
        self,
        what: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        mismatched: Sequence[str],
        given: int,
        expected: int,
    ) -> None:
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), mismatched
        super().__init__(
            f"{what} does not match the model ({given} tensors given, {expected} expected): "
            f"{len(missing)} missing {list(missing[:SHOWN])}, "
            f"{len(unexpected)} unexpected {list(unexpected[:SHOWN])}, "
            f"{len(mismatched)} mis-shaped {list(mismatched[:SHOWN])}"
        )


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def read_state_dict(path: str | Path, container_key: str | None = None) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` from safetensors or ``torch.load(weights_only=True)``.

    ``container_key``: the file may hold ``{container_key: state_dict, ...}`` (detectron2's
    ``{"model": ...}``); the state dict is taken from there.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (e.g. OpenAI's clip.load file), which "
            "torch.load(weights_only=True) cannot read. Convert it once in a trusted "
            "environment: torch.jit.load(path, map_location='cpu').state_dict(), saved with "
            "safetensors.torch.save_file (or torch.save of that plain dict)."
        )
    try:
        # memory-mapped where the format allows (every zip-format torch.save): a released FOCUS
        # .pth also carries the optimiser state (5.1 GB for FOCUS-L, network 2.1 GB), and only
        # the tensors of the state dict taken out below are ever read
        mmap = zipfile.is_zipfile(path)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path} cannot be read with torch.load(weights_only=True) (it pickles more than "
            f"tensors, or is not a torch file): {type(exc).__name__}: {exc}"
        ) from exc
    if container_key is not None and isinstance(obj, Mapping) and container_key in obj:
        obj = obj[container_key]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        found = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        wanted = f"{{{container_key!r}: state_dict}} or a " if container_key else "a "
        raise CheckpointError(f"{path}: expected {wanted}flat dict of tensors, found {found}")
    return dict(obj)


def shapes_of(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def check_state_dict(
    state: Mapping[str, Tensor],
    target: Mapping[str, Sequence[int]],
    what: str,
    optional: Collection[str] = (),
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state`` has exactly ``target``'s names and
    shapes (``optional`` names may be absent)."""
    missing = sorted(set(target) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(target))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k])}"
        for k in set(state) & set(target)
        if tuple(state[k].shape) != tuple(target[k])
    )
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(what, missing, unexpected, mismatched, len(state), len(target))


def model_shapes(
    config: FocusConfig, keep: Callable[[str], bool] | None = None
) -> dict[str, tuple[int, ...]]:
    """Every state-dict name and shape of ``build_focus(config)``, built on the meta device
    (no memory, milliseconds even for ``giant``); ``keep`` filters the names."""
    from models.build import build_focus

    with torch.device("meta"):
        model = build_focus(config)
    return {k: s for k, s in shapes_of(model.state_dict()).items() if keep is None or keep(k)}


def load_strict(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Check ``state`` against ``model`` by name and shape, then load it (strict)."""
    check_state_dict(state, shapes_of(model.state_dict()), what)
    model.load_state_dict(state, strict=True)


def load_subset(
    model: nn.Module,
    state: Mapping[str, Tensor],
    subset: Collection[str],
    what: str,
    optional: Collection[str] = (),
) -> None:
    """Load ``state`` into the ``subset`` of ``model``'s names, strictly within that subset;
    every other tensor keeps its value."""
    target = {k: s for k, s in shapes_of(model.state_dict()).items() if k in set(subset)}
    check_state_dict(state, target, what, optional)
    result = model.load_state_dict(state, strict=False)
    left = (set(result.missing_keys) & set(subset)) - set(optional)
    if result.unexpected_keys or left:  # internal invariant after check_state_dict
        raise RuntimeError(f"loading {what} left {result}")
    logger.info("loaded %d tensors of %s", len(state), what)
