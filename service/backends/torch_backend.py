"""PyTorch backend: a FOCUS checkpoint directory (focus.json + model.safetensors), CPU or CUDA.

torch and ``models.checkpoint`` are imported here, lazily, and only when this backend is
constructed: with ONNX Runtime or TensorRT selected the service never imports torch. The
network runs through ``models.predict.TorchPredictor``, as in export parity and evaluation;
``FOCUS_PRECISION=bf16`` (CPU or CUDA) or ``fp16`` (CUDA) runs it under ``torch.autocast``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.config import ModelCard
from models.contract import WEIGHTS_FILE
from service.backends.base import Backend, BackendUnavailableError

logger = logging.getLogger(__name__)


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        directory: Path,
        card: ModelCard,
        *,
        device: str = "cpu",
        require_gpu: bool = False,
        intra_op_threads: int = 0,
        precision: str = "fp32",
    ) -> None:
        try:
            import torch

            from models.checkpoint import load_checkpoint
            from models.predict import TorchPredictor
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the PyTorch backend needs torch and models.checkpoint ({exc}); install the "
                "train extra (pip install '.[train]')"
            ) from exc
        if device == "cuda" and not torch.cuda.is_available():
            if require_gpu:
                raise BackendUnavailableError(
                    "FOCUS_REQUIRE_GPU=true but torch sees no CUDA device"
                )
            logger.warning("torch sees no CUDA device; running %s on CPU", directory)
            device = "cpu"
        if intra_op_threads > 0:
            torch.set_num_threads(intra_op_threads)
        model, loaded_card = load_checkpoint(directory)
        if loaded_card.task != card.task:
            raise ValueError(
                f"{directory}: checkpoint task {loaded_card.task!r} != focus.json {card.task!r}"
            )
        try:
            self.predictor: Any = TorchPredictor(model, device, precision)
        except ValueError as exc:
            raise BackendUnavailableError(str(exc)) from exc
        self.precision = precision
        self.card = loaded_card
        self.device = device
        self.artefact = Path(directory) / WEIGHTS_FILE

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs: tuple[np.ndarray, np.ndarray] = self.predictor.infer(image, edges)
        return outputs

    def close(self) -> None:
        self.predictor = None
