"""ONNX Runtime backend: CPU, or CUDA through the CUDA execution provider.

The session is ``models.runtime.onnxruntime.OnnxRuntimePredictor``, the same one export's parity
check runs; this adapter adds the model card and checks it against the graph's metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from models.config import ModelCard
from models.runtime.onnxruntime import (
    CPU_EP,
    CUDA_EP,
    OnnxRuntimePredictor,
    cuda_provider_available,
)
from service.backends.base import Backend

__all__ = ["CPU_EP", "CUDA_EP", "OnnxRuntimeBackend", "cuda_provider_available"]

logger = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        *,
        device: str = "cpu",
        require_gpu: bool = False,
        intra_op_threads: int = 0,
    ) -> None:
        self.card = card
        self.artefact = Path(path)
        self.predictor = OnnxRuntimePredictor(
            path, device=device, require_gpu=require_gpu, intra_op_threads=intra_op_threads
        )
        self.session = self.predictor.session
        self.device = self.predictor.device
        self._check_metadata()

    def _check_metadata(self) -> None:
        embedded = self.predictor.embedded_card()
        if embedded is None:
            return
        for key in ("task", "preset"):
            theirs, ours = embedded.get(key), getattr(self.card, key)
            if theirs is not None and theirs != ours:
                raise ValueError(
                    f"{self.artefact}: the ONNX metadata says {key}={theirs!r} but focus.json "
                    f"beside it says {ours!r}"
                )

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predictor.infer(image, edges)

    def close(self) -> None:
        self.predictor.close()
        self.session = None
