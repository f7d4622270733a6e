"""The model repository: ``<repo>/<task>/focus.json`` plus one or more artefacts.

Directory names are task names or aliases; anything else is skipped with a warning, as is a
task directory without ``focus.json`` or without any artefact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from models.config import ModelCard
from models.tasks import UnknownTaskError, canonical_task

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
SAFETENSORS_FILE = "model.safetensors"
ARTEFACTS: tuple[str, ...] = (ENGINE_FILE, ONNX_FILE, SAFETENSORS_FILE)


class RepositoryError(RuntimeError):
    """The model repository is missing, empty or inconsistent."""


@dataclass(frozen=True)
class ModelEntry:
    task: str  # canonical task name
    directory: Path
    card: ModelCard
    artefacts: tuple[str, ...]  # which of ARTEFACTS exist

    def has(self, artefact: str) -> bool:
        return artefact in self.artefacts


def scan_repository(root: Path | str) -> dict[str, ModelEntry]:
    """Every servable task in ``root``, keyed by canonical task name."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    entries: dict[str, ModelEntry] = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            task = canonical_task(directory.name)
        except UnknownTaskError:
            logger.warning("skipping %s: not a task name", directory)
            continue
        if not (directory / "focus.json").is_file():
            logger.warning("skipping %s: no focus.json", directory)
            continue
        try:
            card = ModelCard.load(directory)
        except ValueError as exc:
            raise RepositoryError(str(exc)) from exc
        if canonical_task(card.task) != task:
            raise RepositoryError(f"{directory}/focus.json is for task {card.task!r}, not {task!r}")
        artefacts = tuple(a for a in ARTEFACTS if (directory / a).is_file())
        if not artefacts:
            logger.warning("skipping %s: none of %s", directory, ", ".join(ARTEFACTS))
            continue
        if task in entries:
            raise RepositoryError(
                f"task {task!r} appears twice: {entries[task].directory} and {directory}"
            )
        entries[task] = ModelEntry(task=task, directory=directory, card=card, artefacts=artefacts)
    if not entries:
        raise RepositoryError(
            f"no models in {root}: expected <task>/focus.json with one of {', '.join(ARTEFACTS)}"
        )
    return entries
