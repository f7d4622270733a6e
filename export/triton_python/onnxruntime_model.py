"""Triton Python model ``<task>`` for servers without Triton's ONNX Runtime backend.

The ``--model-backend python-onnxruntime`` variant of the network step: the same
``model.onnx`` run by ``models.runtime.onnxruntime.OnnxRuntimePredictor`` (the runner the
service uses) on the CPU. Triton's dynamic batcher hands ``execute`` several requests whose
tensors have one shape (it batches equal shapes only: our same-padded-shape rule); they run as
one batch and the outputs are split back per request.
"""

import json
from pathlib import Path

import focus_bootstrap  # noqa: F401  (sys.path from config.pbtxt, before numpy)
import numpy as np
import triton_python_backend_utils as pb_utils

from models.contract import INPUT_NAMES, ONNX_FILE, OUTPUT_NAMES, check_padded_shape
from models.runtime.onnxruntime import OnnxRuntimePredictor

VERSION_DIR = Path(__file__).resolve().parent


def _error(message: str, code: int) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        threads = int(config["parameters"]["intra_op_threads"]["string_value"])
        self.predictor = OnnxRuntimePredictor(VERSION_DIR / ONNX_FILE, intra_op_threads=threads)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            image = pb_utils.get_input_tensor_by_name(request, INPUT_NAMES[0]).as_numpy()
            edges = pb_utils.get_input_tensor_by_name(request, INPUT_NAMES[1]).as_numpy()
            try:
                if image.shape != edges.shape or image.ndim != 4 or image.shape[1] != 3:
                    raise ValueError(
                        f"image {list(image.shape)} and edges {list(edges.shape)} must both "
                        "be [N, 3, H, W]"
                    )
                check_padded_shape(image.shape[2], image.shape[3])
            except ValueError as exc:
                responses[i] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            groups.setdefault(image.shape[1:], []).append((i, image, edges))
        for members in groups.values():
            self._run(members, responses)
        return responses

    def _run(self, members: list, responses: list) -> None:
        image = np.concatenate([m[1] for m in members])
        edges = np.concatenate([m[2] for m in members])
        try:
            class_probs, mask_logits = self.predictor.infer(image, edges)
        except Exception as exc:  # ONNX Runtime errors: fail this batch, keep serving
            for i, _, _ in members:
                responses[i] = _error(f"ONNX Runtime: {exc}", pb_utils.TritonError.INTERNAL)
            return
        start = 0
        for i, part, _ in members:
            stop = start + part.shape[0]
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(OUTPUT_NAMES[0], class_probs[start:stop]),
                    pb_utils.Tensor(OUTPUT_NAMES[1], mask_logits[start:stop]),
                ]
            )
            start = stop

    def finalize(self) -> None:
        self.predictor.close()
