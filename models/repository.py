"""The model repository, in Triton's layout: ``<repo>/<task>/<version>/{focus.json, artefacts}``.

Torch-free: the service scans it, ``focus export``/``focus pipeline``/``focus pull`` and the
Triton writer publish into it, all through this module.

* A task directory is named by the task or an alias; a version directory by a positive integer.
  The flat layout of round 1, ``<repo>/<task>/focus.json`` plus artefacts, reads as version 1
  (numbered versions may sit beside it: a task published into a flat directory gets ``2/``).
* Anything else is skipped with a warning (hidden directories silently: they are a publisher's
  staging area); a version whose ``focus.json`` names another task is an error.
* :func:`publish_version` copies a finished model directory into the next free version through
  a hidden staging directory and one ``rename``: a reader sees the whole version or none of it,
  and a failure at any step leaves the repository as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    ENGINE_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
)
from models.tasks import UnknownTaskError, canonical_task

logger = logging.getLogger(__name__)

# Files that make a version servable, in the order ``auto`` prefers them on a GPU.
ARTEFACTS: tuple[str, ...] = (ENGINE_FILE, ONNX_FILE, WEIGHTS_FILE)
FLAT_VERSION = 1


class RepositoryError(RuntimeError):
    """The model repository is missing, empty or inconsistent."""


@dataclass(frozen=True)
class ModelEntry:
    """One version of one task's model."""

    task: str  # canonical task name
    version: int  # the version directory's number (1 for the flat layout)
    directory: Path
    card: ModelCard
    artefacts: tuple[str, ...]  # artefact files present, ARTEFACTS first, then variants

    def has(self, artefact: str) -> bool:
        return artefact in self.artefacts

    def path(self, artefact: str) -> Path:
        return self.directory / artefact


def _artefacts(directory: Path) -> tuple[str, ...]:
    found = [a for a in ARTEFACTS if (directory / a).is_file()]
    variants = sorted(
        p.name
        for p in directory.glob("model.*.onnx")
        if p.is_file() and p.name not in found and not p.name.startswith(".")
    )
    return (*found, *variants)


def _read_version(task: str, version: int, directory: Path) -> ModelEntry | None:
    if not (directory / CARD_FILE).is_file():
        logger.warning("skipping %s: no %s", directory, CARD_FILE)
        return None
    try:
        card = ModelCard.load(directory)
    except ValueError as exc:
        raise RepositoryError(str(exc)) from exc
    try:
        card_task = canonical_task(card.task)
    except UnknownTaskError:
        card_task = card.task
    if card_task != task:
        raise RepositoryError(f"{directory}/{CARD_FILE} is for task {card.task!r}, not {task!r}")
    artefacts = _artefacts(directory)
    if not artefacts:
        logger.warning("skipping %s: none of %s", directory, ", ".join(ARTEFACTS))
        return None
    return ModelEntry(
        task=task, version=version, directory=directory, card=card, artefacts=artefacts
    )


def _version_dirs(task_dir: Path) -> list[tuple[int, Path]]:
    versions = []
    for child in sorted(task_dir.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name.isdigit() and int(child.name) > 0 and str(int(child.name)) == child.name:
            versions.append((int(child.name), child))
        else:
            logger.warning("skipping %s: not a version number", child)
    return versions


def task_versions(task: str, task_dir: Path) -> list[ModelEntry]:
    """Every servable version in one task directory, ascending."""
    entries: dict[int, ModelEntry] = {}
    numbered = _version_dirs(task_dir)
    if (task_dir / CARD_FILE).is_file():
        flat = _read_version(task, FLAT_VERSION, task_dir)
        if flat is not None:
            entries[FLAT_VERSION] = flat
    elif not numbered:
        logger.warning("skipping %s: no %s and no version directories", task_dir, CARD_FILE)
    for version, directory in numbered:
        if version in entries:
            raise RepositoryError(
                f"{task_dir}: version {version} appears twice (the flat layout is version "
                f"{FLAT_VERSION}, and {directory} exists too)"
            )
        entry = _read_version(task, version, directory)
        if entry is not None:
            entries[version] = entry
    return [entries[v] for v in sorted(entries)]


def _task_dirs(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    found: dict[str, Path] = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if directory.name.startswith("."):
            continue
        try:
            task = canonical_task(directory.name)
        except UnknownTaskError:
            logger.warning("skipping %s: not a task name", directory)
            continue
        if task in found:
            raise RepositoryError(f"task {task!r} appears twice: {found[task]} and {directory}")
        found[task] = directory
    return found


def scan_versions(root: Path | str) -> dict[str, list[ModelEntry]]:
    """Every servable version of every task in ``root``, keyed by canonical task name."""
    root = Path(root)
    result = {}
    for task, directory in _task_dirs(root).items():
        versions = task_versions(task, directory)
        if versions:
            result[task] = versions
    return result


def scan_repository(
    root: Path | str, pinned: Mapping[str, int] | None = None
) -> dict[str, ModelEntry]:
    """The version to serve of every task: the highest, or the one ``pinned`` names."""
    pinned = {canonical_task(k): v for k, v in (pinned or {}).items()}
    chosen: dict[str, ModelEntry] = {}
    for task, versions in scan_versions(root).items():
        if task in pinned:
            match = [e for e in versions if e.version == pinned[task]]
            if not match:
                have = ", ".join(str(e.version) for e in versions)
                raise RepositoryError(
                    f"{task}: pinned version {pinned[task]} is not in {root} (has {have})"
                )
            chosen[task] = match[0]
        else:
            chosen[task] = versions[-1]
    missing = sorted(set(pinned) - set(chosen))
    if missing:
        raise RepositoryError(f"pinned tasks without any model in {root}: {', '.join(missing)}")
    if not chosen:
        raise RepositoryError(
            f"no models in {root}: expected <task>/<version>/{CARD_FILE} (or <task>/{CARD_FILE})"
            f" with one of {', '.join(ARTEFACTS)}"
        )
    return chosen


def publish_version(root: Path | str, source: Path | str, *, task: str | None = None) -> ModelEntry:
    """Copy the model directory ``source`` into ``root`` as the task's next version.

    ``task`` defaults to the one in ``source/focus.json``. The copy goes to a hidden staging
    directory inside the task directory and is renamed into place; if another publisher took
    the number first, the next one is used. Nothing is left behind on failure.
    """
    root, source = Path(root), Path(source)
    card = ModelCard.load(source)
    task = canonical_task(task if task is not None else card.task)
    if canonical_task(card.task) != task:
        raise RepositoryError(f"{source}/{CARD_FILE} is for task {card.task!r}, not {task!r}")
    if not _artefacts(source):
        raise RepositoryError(f"{source}: none of {', '.join(ARTEFACTS)} to publish")
    root.mkdir(parents=True, exist_ok=True)
    task_dir = _task_dirs(root).get(task, root / task)
    task_dir.mkdir(exist_ok=True)
    staging = task_dir / f".staging-{uuid.uuid4().hex}"
    target: Path | None = None  # the version directory once its number is claimed
    try:
        shutil.copytree(source, staging, copy_function=shutil.copy2)
        os.chmod(staging, 0o755)
        for _ in range(100):
            existing = [v for v, _ in _version_dirs(task_dir)]
            if (task_dir / CARD_FILE).is_file():
                existing.append(FLAT_VERSION)
            version = max(existing, default=0) + 1
            claimed = task_dir / str(version)
            try:
                claimed.mkdir()  # claim the number; the rename below replaces the empty directory
            except FileExistsError:
                continue
            target = claimed
            os.replace(staging, target)
            break
        else:  # pragma: no cover - 100 concurrent publishers
            raise RepositoryError(f"{task_dir}: could not claim a version number")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if target is not None and target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # the claimed number, still empty
        raise
    assert target is not None  # the loop either claimed a number or raised
    entry = _read_version(task, version, target)
    if entry is None:  # pragma: no cover - checked above
        raise RepositoryError(f"{target}: published but not servable")
    logger.info("published %s version %d at %s", task, version, target)
    return entry
