"""Fixtures shared across the test packages.

``tiny_pipeline``: one ``tiny`` FOCUS model for the whole session, made by the real
train -> evaluate -> export pipeline (``export.pipeline.run_pipeline``: a few training steps on
a small synthetic set, the ONNX export with its parity check against PyTorch) and published as
``<repo>/salient/{focus.json, model.onnx, model.safetensors, pipeline.json}``, which is also a
checkpoint directory. The ONNX trace takes minutes on two cores, so it happens at most once
per session, and the result is cached under pytest's cache directory keyed by the sources of
``models/``, ``training/`` and ``export/`` and the torch/onnx versions: only the first session
after a change pays for it (CI, a fresh clone, always runs it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import shutil
import time
from pathlib import Path

import pytest
from hub_testing import ServedPull, run_served_pull
from tiny_pipeline import TinyPipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_TASK = "salient"
PIPELINE_SOURCES = ("models", "training", "export")


def _source_key() -> str:
    digest = hashlib.sha256()
    for package in PIPELINE_SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            digest.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    return digest.hexdigest()[:16]


def _produce(directory: Path) -> None:
    try:
        import torch  # noqa: F401

        from export.pipeline import PipelineConfig, run_pipeline
        from models.synth import write_dataset
        from training.loop import torch_threads
    except ImportError as exc:
        pytest.skip(f"the tiny FOCUS pipeline cannot run here: {exc}")
    data = write_dataset(PIPELINE_TASK, 8, directory / "data", seed=0, size=160)
    lines: list[str] = []
    config = PipelineConfig(
        task=PIPELINE_TASK,
        data=(str(data),),
        eval_data=(str(data),),  # 8 images: too few to hold out a split worth scoring
        out=directory / "repo",
        preset="tiny",
        iters=3,
        batch_size=2,
        num_points=1024,
        workers=0,
        device="cpu",
        tensorrt="off",
        with_weights=True,
        train_options={"progress": False, "tensorboard": False},
    )
    with torch_threads(1):
        report = run_pipeline(config, echo=lines.append)
    (directory / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (directory / "pipeline.log").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_pipeline(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TinyPipeline:
    store = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if store is not None:
        cache = Path(store.mkdir("focus-tiny-pipeline"))
    else:
        cache = tmp_path_factory.mktemp("focus-tiny-pipeline")
    directory = cache / _source_key()
    fresh = not (directory / "report.json").is_file()
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)
        staging = cache / f".staging-{time.time_ns()}"
        staging.mkdir(parents=True)
        try:
            _produce(staging)
            staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in cache.iterdir():
            if old != directory and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    return TinyPipeline(
        repository=directory / "repo",
        entry=directory / "repo" / PIPELINE_TASK / "1",  # the version it published
        data=directory / "data",
        report=json.loads((directory / "report.json").read_text(encoding="utf-8")),
        log=(directory / "pipeline.log").read_text(encoding="utf-8") if fresh else "",
    )


@pytest.fixture(scope="session")
def served_pull(tmp_path_factory: pytest.TempPathFactory) -> ServedPull:
    """A real ``focus serve`` with ``FOCUS_PULL`` that pulled, imported, exported and published
    a released-layout tiny checkpoint from an offline Hugging Face cache (tests/hub_testing.py).
    Shared by the export and service tests: one ONNX trace (minutes) per session."""
    pytest.importorskip("torch")
    pytest.importorskip("huggingface_hub")
    return run_served_pull(tmp_path_factory.mktemp("served-pull"))
