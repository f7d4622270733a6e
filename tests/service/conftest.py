"""Fixtures for the service tests: a real tiny FOCUS model in a temporary model repository.

The model is the tiny FOCUS model that the real train -> export pipeline publishes in
``tests/conftest.py`` (``tiny_pipeline``): ONNX for every backend test, its safetensors
checkpoint for the torch backend. No model is mocked. The pipeline's output is cached under
pytest's cache directory, keyed by the sources, so only the first session after a change pays.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_testing import image_bytes

from models.config import ModelCard
from models.tasks import TASKS as TASKS_BY_NAME

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("camouflage", "salient", "shadow")  # served in the test repository
TORCH_TASK = "camouflage"  # also has model.safetensors


# --------------------------------------------------------------------------- the tiny model


def _retag_onnx(source: Path, target: Path, card_json: str) -> None:
    """Copy an exported graph with another task's focus.json in its metadata."""
    import onnx

    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key == "focus.json":
            entry.value = card_json
    onnx.save(proto, str(target))


@pytest.fixture(scope="session")
def tiny_export(tiny_pipeline) -> Path:
    """The tiny model as published by the real pipeline (``tests/conftest.py``): a checkpoint
    directory with ``focus.json``, ``model.safetensors`` and ``model.onnx``. Shared with the
    export tests, so a test session traces the network once."""
    return tiny_pipeline.entry


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
