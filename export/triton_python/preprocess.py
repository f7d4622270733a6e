"""Triton Python model ``<task>_preprocess``: encoded image bytes -> the network's inputs.

Decoding is ``models.imaging.decode_image`` and the geometry ``models.processing``, exactly
what the service and ``focus segment`` run. Outputs: ``image`` and ``edges`` float32
[1, 3, Hp, Wp], and the original / resized / padded (height, width) as int32 [1, 2], which the
ensemble carries to ``<task>_postprocess``. Undecodable or too large images are answered with
an INVALID_ARG error (HTTP 400) carrying the decoder's message.
"""

import json
from pathlib import Path

import focus_bootstrap  # noqa: F401  (sys.path from config.pbtxt, before numpy)
import numpy as np
import triton_python_backend_utils as pb_utils

from models.config import ModelCard
from models.contract import ENSEMBLE_INPUT, INPUT_NAMES, SIZE_NAMES
from models.imaging import ImageDecodeError, ImageTooLargeError, decode_image
from models.processing import preprocess_with_card

VERSION_DIR = Path(__file__).resolve().parent


def _error(message: str) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.max_pixels = int(config["parameters"]["max_pixels"]["string_value"])
        self.card = ModelCard.load(VERSION_DIR)

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request: "pb_utils.InferenceRequest") -> "pb_utils.InferenceResponse":
        payload = pb_utils.get_input_tensor_by_name(request, ENSEMBLE_INPUT).as_numpy()
        if payload.size != 1:
            return _error(f"{ENSEMBLE_INPUT} must hold exactly one image, got {payload.size}")
        try:
            rgb = decode_image(bytes(payload.reshape(-1)[0]), self.max_pixels).rgb
        except (ImageDecodeError, ImageTooLargeError) as exc:
            return _error(str(exc))
        prepared = preprocess_with_card(rgb, self.card)
        sizes = (prepared.original_size, prepared.resized_size, prepared.padded_size)
        outputs = [
            pb_utils.Tensor(INPUT_NAMES[0], prepared.image[None]),
            pb_utils.Tensor(INPUT_NAMES[1], prepared.edges[None]),
            *(
                pb_utils.Tensor(name, np.asarray([size], dtype=np.int32))
                for name, size in zip(SIZE_NAMES, sizes, strict=True)
            ),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)
