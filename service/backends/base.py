"""The small interface every inference backend implements: a :class:`models.contract.Predictor`
plus what the service reports about it.

A backend turns one batch of preprocessed inputs into the network outputs of the ONNX contract,
as numpy arrays. Pre/post-processing is never a backend's business, so every backend gives the
same mask through the same code. The runtimes themselves live in ``models.runtime`` (torch-free)
and ``models.predict`` (torch), where export's parity checks use them too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from models.config import ModelCard
from models.contract import BackendUnavailableError, check_outputs

__all__ = ["Backend", "BackendUnavailableError", "check_outputs"]


class Backend(ABC):
    """One loaded model, ready to run batches (a :class:`models.contract.Predictor`).

    ``infer`` takes ``image`` and ``edges`` float32 [N, 3, H, W] (H, W multiples of 32) and
    returns ``class_probs`` float32 [N, 2, 2] and ``mask_logits`` float32 [N, 2, H/4, W/4].
    It is called from one worker thread at a time per backend.
    """

    name: str  # "onnxruntime" | "openvino" | "tensorrt" | "torch"
    device: str  # "cpu" | "cuda"
    card: ModelCard
    artefact: Path  # the file the model was loaded from
    max_batch: int | None = None  # a hard limit of the artefact (TensorRT profile), else None
    precision: str = "fp32"  # fp32 | bf16 | fp16 | int8 (models/precision.py)
    gate: str = "fp32 reference (no gate needed)"  # the variant's accuracy gate, in words
    selection: str = ""  # why this backend and precision were chosen (FOCUS_BACKEND=auto)

    @abstractmethod
    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N,3,H,W] x2 -> (class_probs [N,2,2], mask_logits [N,2,H/4,W/4]), float32."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release native resources (sessions, CUDA buffers)."""

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device} ({self.artefact.name})"
