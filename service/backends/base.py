"""The small interface every inference backend implements.

A backend turns one batch of preprocessed inputs into the network outputs of the ONNX contract
(DESIGN "Contracts"), as numpy arrays. Pre/post-processing is never a backend's business, so
every backend gives the same mask through the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from models.config import ModelCard

INPUT_NAMES: tuple[str, str] = ("image", "edges")
OUTPUT_NAMES: tuple[str, str] = ("class_probs", "mask_logits")


class BackendUnavailableError(RuntimeError):
    """The backend cannot run here (library, device or artefact missing); says how to fix it."""


class Backend(ABC):
    """One loaded model, ready to run batches.

    ``infer`` takes ``image`` and ``edges`` float32 [N, 3, H, W] (H, W multiples of 32) and
    returns ``class_probs`` float32 [N, 2, 2] and ``mask_logits`` float32 [N, 2, H/4, W/4].
    It is called from one worker thread at a time per backend.
    """

    name: str  # "onnxruntime" | "tensorrt" | "torch"
    device: str  # "cpu" | "cuda"
    card: ModelCard
    artefact: Path  # the file the model was loaded from
    max_batch: int | None = None  # a hard limit of the artefact (TensorRT profile), else None

    @abstractmethod
    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N,3,H,W] x2 -> (class_probs [N,2,2], mask_logits [N,2,H/4,W/4]), float32."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release native resources (sessions, CUDA buffers)."""

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.artefact.name})"


def check_outputs(
    class_probs: np.ndarray, mask_logits: np.ndarray, batch: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Assert the contract shapes of a backend's outputs; a violation is a backend failure."""
    cp = np.asarray(class_probs, dtype=np.float32)
    ml = np.asarray(mask_logits, dtype=np.float32)
    if (
        cp.shape != (batch, 2, 2)
        or ml.shape[:2] != (batch, 2)
        or ml.shape[2:]
        != (
            height // 4,
            width // 4,
        )
    ):
        raise RuntimeError(
            f"backend returned class_probs {cp.shape} and mask_logits {ml.shape} for input "
            f"[{batch}, 3, {height}, {width}]; expected [{batch}, 2, 2] and "
            f"[{batch}, 2, {height // 4}, {width // 4}]"
        )
    return cp, ml
