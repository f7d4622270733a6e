"""Triton Python model ``<task>_postprocess``: the network's outputs -> the PNG mask.

``models.processing.postprocess`` (upsample, crop, resize to the original size, combine with
the class probabilities) and ``models.imaging`` (uint8 rounding, PNG encoding): the same code
as ``focus segment`` and ``POST /segment?format=png``. Inputs ``class_probs`` [1, 2, 2],
``mask_logits`` [1, 2, Hp/4, Wp/4] and the three int32 [1, 2] sizes from the preprocess step;
output ``mask_png``: one 8-bit grey PNG at the original image size.
"""

from pathlib import Path

import focus_bootstrap  # noqa: F401  (sys.path from config.pbtxt, before numpy)
import numpy as np
import triton_python_backend_utils as pb_utils

from models.contract import ENSEMBLE_OUTPUT, MASK_STRIDE, OUTPUT_NAMES, SIZE_NAMES
from models.imaging import encode_mask_png, mask_to_uint8
from models.processing import postprocess

VERSION_DIR = Path(__file__).resolve().parent


def _size(request: "pb_utils.InferenceRequest", name: str) -> tuple[int, int]:
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    if values.size != 2 or (values <= 0).any():
        raise ValueError(f"{name} must be a positive (height, width), got {values.tolist()}")
    return int(values[0]), int(values[1])


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        pass

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request: "pb_utils.InferenceRequest") -> "pb_utils.InferenceResponse":
        class_probs = pb_utils.get_input_tensor_by_name(request, OUTPUT_NAMES[0]).as_numpy()
        mask_logits = pb_utils.get_input_tensor_by_name(request, OUTPUT_NAMES[1]).as_numpy()
        try:
            original, resized, padded = (_size(request, name) for name in SIZE_NAMES)
            low = (padded[0] // MASK_STRIDE, padded[1] // MASK_STRIDE)
            if class_probs.shape[0] != 1 or tuple(mask_logits.shape[2:]) != low:
                raise ValueError(
                    f"mask_logits {list(mask_logits.shape)} do not match the padded size "
                    f"{list(padded)} (expected [1, 2, {low[0]}, {low[1]}])"
                )
        except ValueError as exc:
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        soft, _ = postprocess(
            class_probs[0], mask_logits[0], padded, resized, original, with_binary=False
        )
        png = encode_mask_png(mask_to_uint8(soft))
        mask = pb_utils.Tensor(ENSEMBLE_OUTPUT, np.asarray([[png]], dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[mask])
