"""TensorRT backend: the engine runner of ``models.runtime.tensorrt`` plus where engines are found.

Engines are looked for beside the model (``<repo>/<task>/<version>/model.engine``) and in the
engine cache (``<FOCUS_ENGINE_CACHE>/<task>/<version>/model.engine``, where engines built on
this machine go); the first one built for this GPU and TensorRT version wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.config import ModelCard
from models.contract import ENGINE_FILE, engine_cache_path
from models.runtime.tensorrt import (
    EngineMismatchError,
    TensorRTPredictor,
    check_engine_compatibility,
    select_engine,
)
from service.backends.base import Backend

__all__ = [
    "EngineMismatchError",
    "TensorRTBackend",
    "check_engine_compatibility",
    "engine_candidates",
    "select_engine",
]


def engine_candidates(model_dir: Path, engine_cache: Path, task: str, version: int) -> list[Path]:
    """Existing engine files for a task version: beside the model first, then in the cache."""
    paths = [model_dir / ENGINE_FILE, engine_cache_path(engine_cache, task, version)]
    return [p for p in paths if p.is_file()]


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, candidates: Sequence[Path], card: ModelCard, *, device_index: int = 0):
        self.predictor = TensorRTPredictor(candidates, device_index=device_index)
        self.card = card
        self.artefact = self.predictor.path
        self.max_batch = self.predictor.max_batch
        self.precision = self.predictor.precision

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predictor.infer(image, edges)

    def close(self) -> None:
        self.predictor.close()
