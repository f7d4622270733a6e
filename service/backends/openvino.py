"""OpenVINO backend (CPU): ``model.onnx`` or the IR ``model.xml`` / ``model.int8.xml``, torch-free.

The runtime is ``models.runtime.openvino.OpenVinoPredictor``, which export's gates also run.
The inference precision is always set (fp32 -> f32, bf16, int8 IR -> bf16 elsewhere) and the
compiled model is cached under ``<FOCUS_OPENVINO_CACHE>/<task>/<version>/<artefact>-<precision>``
(one folder per precision: OpenVINO 2026.4 crashes when two precisions of one graph share one),
so a restart imports the compiled blob instead of compiling again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.config import ModelCard
from models.runtime.openvino import OpenVinoPredictor
from service.backends.base import Backend


def openvino_cache_dir(cache: Path, task: str, version: int, artefact: str, precision: str) -> Path:
    """The compile-cache folder of one (task version, artefact, precision)."""
    return cache / task / str(version) / f"{artefact}-{precision}"


class OpenVinoBackend(Backend):
    name = "openvino"
    device = "cpu"

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        *,
        precision: str = "fp32",
        intra_op_threads: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        self.card = card
        self.artefact = Path(path)
        self.predictor = OpenVinoPredictor(
            path, precision=precision, threads=intra_op_threads, cache_dir=cache_dir
        )
        self.precision = precision
        self.inference_precision = self.predictor.inference_precision
        self.loaded_from_cache = self.predictor.loaded_from_cache

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predictor.infer(image, edges)

    def describe(self) -> str:
        cached = ", compiled model from the cache" if self.loaded_from_cache else ""
        return (
            f"openvino {self.precision} on cpu ({self.artefact.name}, inference precision "
            f"{self.inference_precision}{cached})"
        )

    def close(self) -> None:
        self.predictor.close()
