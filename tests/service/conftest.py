"""Fixtures for the service tests: a real tiny FOCUS model in a temporary model repository.

The model is ``build_focus(get_preset("tiny"))`` with a fixed seed, exported through
``export.onnx.export_onnx`` (the project's own exporter) and saved with
``models.checkpoint.save_checkpoint`` for the torch backend. No model is mocked. The export is
cached under pytest's cache directory, keyed by the source of ``models/`` and ``export/onnx.py``
and the torch version, so only the first session after a model change pays for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_testing import image_bytes

from models.config import ModelCard, make_card
from models.tasks import TASKS as TASKS_BY_NAME

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("camouflage", "salient", "shadow")  # served in the test repository
TORCH_TASK = "camouflage"  # also has model.safetensors
SEED = 0


# --------------------------------------------------------------------------- the tiny model


def _source_key() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "models").glob("*.py")) + [ROOT / "export" / "onnx.py"]:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    try:
        digest.update(importlib.metadata.version("torch").encode())  # without importing it
    except importlib.metadata.PackageNotFoundError:
        pass
    return digest.hexdigest()[:16]


def _export_tiny(directory: Path) -> None:
    """A checkpoint directory: ``{focus.json, model.safetensors, model.onnx}``, tiny preset."""
    try:
        import torch

        from export.onnx import export_onnx
        from models.build import build_focus
        from models.checkpoint import save_checkpoint
        from models.config import get_preset
    except ImportError as exc:
        pytest.skip(f"the tiny FOCUS model cannot be built here: {exc}")
    torch.manual_seed(SEED)
    model = build_focus(get_preset("tiny")).eval()
    card = make_card(TORCH_TASK, "tiny")
    save_checkpoint(model, card, directory)  # replaces the directory: first
    export_onnx(model, card, directory / "model.onnx")


def _retag_onnx(source: Path, target: Path, card_json: str) -> None:
    """Copy an exported graph with another task's focus.json in its metadata."""
    import onnx

    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key == "focus.json":
            entry.value = card_json
    onnx.save(proto, str(target))


@pytest.fixture(scope="session")
def tiny_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a checkpoint directory with its ONNX export beside the weights.

    Same layout as ``tests/conftest.py``'s ``tiny_pipeline.entry`` (trained a few steps by the
    pipeline): returning that instead is a one-line switch that saves one ONNX trace per session.
    """
    store = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if store is not None:
        cache = Path(store.mkdir("focus-service-tiny"))
    else:
        cache = tmp_path_factory.mktemp("focus-service-tiny")
    directory = cache / _source_key()
    if not all(
        (directory / n).is_file() for n in ("focus.json", "model.safetensors", "model.onnx")
    ):
        shutil.rmtree(directory, ignore_errors=True)
        staging = cache / f".staging-{time.time_ns()}"
        try:
            _export_tiny(staging)
            staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in cache.iterdir():
            if old != directory and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    return directory


@pytest.fixture(scope="session")
def model_repository(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<repo>/{camouflage,salient,shadow}/``: ONNX for all, a checkpoint for camouflage."""
    source = ModelCard.load(tiny_export)
    repo = tmp_path_factory.mktemp("model_repository")
    for task in TASKS:
        directory = repo / task
        directory.mkdir()
        card = dataclasses.replace(source, task=task, prompts=TASKS_BY_NAME[task].prompts,
                                   version="test")  # fmt: skip
        card.save(directory)
        _retag_onnx(tiny_export / "model.onnx", directory / "model.onnx", card.to_json())
        if task == TORCH_TASK:
            shutil.copy(tiny_export / "model.safetensors", directory / "model.safetensors")
    return repo


@pytest.fixture(scope="session")
def single_task_repository(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Only ``camouflage`` (ONNX): apps start three times faster for single-task tests."""
    repo = tmp_path_factory.mktemp("single_task_repository")
    (repo / "camouflage").mkdir()
    for name in ("focus.json", "model.onnx"):
        shutil.copy(model_repository / "camouflage" / name, repo / "camouflage" / name)
    return repo


@pytest.fixture(scope="session")
def png_320x240() -> bytes:
    return image_bytes(240, 320, seed=1)


# --------------------------------------------------------------------------------- apps


@pytest.fixture
def make_settings(single_task_repository: Path) -> Callable[..., Any]:
    """Settings for a fresh app; the repository defaults to the single-task one."""
    from service.settings import Settings

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("model_repository", single_task_repository)
        overrides.setdefault("intra_op_threads", 1)
        return Settings(**overrides)

    return make


@pytest.fixture(scope="module")
def client(model_repository: Path) -> Iterator[Any]:
    """A started app with default settings (shared by the read-only tests of a module)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_repository=model_repository, intra_op_threads=1))
    with TestClient(app) as test_client:
        yield test_client
