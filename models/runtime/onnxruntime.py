"""ONNX Runtime: a FOCUS graph on the CPU, or on CUDA through the CUDA execution provider.

ONNX Runtime silently drops a provider it cannot load (missing CUDA/cuDNN libraries), so the
providers the session really got are checked after creation: with ``require_gpu`` that is an
error, otherwise a logged fallback to the CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import (
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAMES,
    BackendUnavailableError,
    check_outputs,
)

logger = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def cuda_provider_available() -> bool:
    """Whether this onnxruntime build ships the CUDA provider (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return CUDA_EP in ort.get_available_providers()


class OnnxRuntimePredictor:
    """One ``InferenceSession`` (full graph optimisation) behind the :class:`Predictor` API."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        require_gpu: bool = False,
        intra_op_threads: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a hard dependency of the service
            raise BackendUnavailableError(f"onnxruntime is not installed ({exc})") from exc
        self.path = Path(path)
        providers = [CPU_EP]
        if device == "cuda":
            if CUDA_EP in ort.get_available_providers():
                providers = [CUDA_EP, CPU_EP]
            elif require_gpu:
                raise BackendUnavailableError(
                    "FOCUS_REQUIRE_GPU=true but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(ort.get_available_providers())}); install "
                    "onnxruntime-gpu instead of onnxruntime"
                )
            else:
                logger.warning("CUDAExecutionProvider unavailable; running %s on CPU", path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: several models share the cores, and a
        # spinning pool of one session steals them from the session that is computing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session: Any = ort.InferenceSession(
            str(self.path), sess_options=options, providers=providers
        )
        active = self.session.get_providers()
        self.device = "cuda" if CUDA_EP in active else "cpu"
        if device == "cuda" and self.device != "cuda":
            message = (
                f"onnxruntime could not load the CUDA provider for {path} (active: {active}); "
                "check the CUDA and cuDNN libraries onnxruntime-gpu needs"
            )
            if require_gpu:
                raise BackendUnavailableError(message)
            logger.warning("%s; running on CPU", message)
        self._check_signature()

    def _check_signature(self) -> None:
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ValueError(
                f"{self.path}: inputs {inputs} / outputs {outputs} do not follow the FOCUS "
                f"ONNX contract (inputs {INPUT_NAMES}, outputs {OUTPUT_NAMES})"
            )

    def embedded_card(self) -> dict[str, Any] | None:
        """The ``focus.json`` stored in the graph's metadata, parsed, or None."""
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if not text:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            logger.warning("%s: %s in the ONNX metadata is not valid JSON", self.path, METADATA_KEY)
            return None
        return data if isinstance(data, dict) else None

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = image.shape
        class_probs, mask_logits = self.session.run(
            list(OUTPUT_NAMES),
            {
                INPUT_NAMES[0]: np.ascontiguousarray(image, np.float32),
                INPUT_NAMES[1]: np.ascontiguousarray(edges, np.float32),
            },
        )
        return check_outputs(class_probs, mask_logits, n, h, w)

    def close(self) -> None:
        self.session = None
