"""OpenVINO on the CPU: a FOCUS graph (``model.onnx`` or IR ``model.xml``) as a Predictor.

Torch-free. The inference precision is always set explicitly (``INFERENCE_PRECISION_HINT``):
left alone, OpenVINO runs bf16 by itself on CPUs with native bf16 (AVX512-BF16, AMX), which is a
different model from the fp32 one the gate compares against. Compiled models go to an on-disk
cache (``CACHE_DIR``) so a restart imports the compiled blob instead of compiling again; give
each (artefact, precision) its own folder: OpenVINO 2026.4 crashes on the first inference of the
second of two models compiled from one graph into one shared cache folder.

``static_shapes``: compile one model per input shape ([N, 3, H, W], a handful at serving time:
batches share one padded shape) instead of one dynamic-shape model. OpenVINO's CPU plugin then
picks fixed kernels and drops most layout reorders: FOCUS-L at 512x512 in bf16 ran in ~3.1 s
instead of ~6.0 s on our 2-core Xeon (benchmarks/RESULTS.md). Each shape costs one compile (tens
of seconds for FOCUS-L, cached on disk in its own folder) and its own copy of the weights, so at
most ``max_shapes`` are kept (least recently used dropped).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import INPUT_NAMES, OUTPUT_NAMES, BackendUnavailableError, check_outputs

logger = logging.getLogger(__name__)

# our precision names -> OpenVINO's inference-precision hint. int8 IR: the quantized ops run in
# int8 whatever the hint; the hint sets the precision of everything NNCF left unquantized.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}


def openvino_version() -> str:
    try:
        import openvino as ov
    except ImportError:
        return "not installed"
    return str(ov.__version__)


def cpu_supports_bf16(core: Any) -> bool:
    """Whether this CPU runs bf16 natively (OpenVINO lists BF16 among its capabilities)."""
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


class OpenVinoPredictor:
    """One compiled OpenVINO model with one infer request (called from one thread at a time)."""

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str = "fp32",
        threads: int = 0,
        cache_dir: str | Path | None = None,
        extra_config: dict[str, Any] | None = None,
        static_shapes: bool = False,
        max_shapes: int = 4,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailableError(
                f"openvino is not installed ({exc}); pip install 'openvino>=2026.4'"
            ) from exc
        if precision not in HINTS:
            raise ValueError(f"unknown OpenVINO precision {precision!r}; use {', '.join(HINTS)}")
        self.path = Path(path)
        self.core = ov.Core()  # compiled models must not outlive the core that made them
        hint = HINTS[precision]
        if hint == "bf16" and not cpu_supports_bf16(self.core):
            raise BackendUnavailableError(
                f"this CPU has no native bf16 (OpenVINO capabilities: "
                f"{', '.join(self.core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}); "
                f"{precision} on OpenVINO needs it"
            )
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(self.cache_dir)
            except OSError as exc:  # a read-only cache must not stop the model from serving
                logger.warning("no OpenVINO compile cache (%s): compiling %s", exc, self.path)
                self.cache_dir = None
        config.update(extra_config or {})
        self.precision = precision
        self.static_shapes = static_shapes
        self.max_shapes = max(1, max_shapes)
        self._config = config
        self._by_shape: OrderedDict[tuple[int, ...], tuple[Any, Any]] = OrderedDict()
        self.compiled: Any = None
        self.request: Any = None
        self.loaded_from_cache = False
        try:
            if static_shapes:
                self._model = self.core.read_model(str(self.path))
                self.inference_precision = hint  # what the first compile will report
                self._check_signature(self._model.inputs, self._model.outputs)
                return
            self.compiled = self.core.compile_model(str(self.path), "CPU", config)
        except RuntimeError as exc:
            raise BackendUnavailableError(f"OpenVINO could not compile {self.path}: {exc}") from exc
        self._describe(self.compiled)
        self._check_signature(self.compiled.inputs, self.compiled.outputs)
        self.request = self.compiled.create_infer_request()

    def _describe(self, compiled: Any) -> None:
        hint_type = compiled.get_property("INFERENCE_PRECISION_HINT")
        # what OpenVINO will really run (e.g. "bf16", "f32"), recorded in cards and /tasks
        self.inference_precision = str(getattr(hint_type, "to_string", lambda: hint_type)())
        try:
            self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except RuntimeError:
            self.loaded_from_cache = False

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        """The infer request of the model compiled for ``shape`` (static mode), compiling once."""
        if shape in self._by_shape:
            self._by_shape.move_to_end(shape)
            return self._by_shape[shape][1]
        model = self._model.clone()
        model.reshape({name: list(shape) for name in INPUT_NAMES})
        config = dict(self._config)
        if "CACHE_DIR" in config:  # one folder per compiled model (see the module docstring)
            folder = Path(config["CACHE_DIR"]) / "x".join(map(str, shape))
            folder.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(folder)
        compiled = self.core.compile_model(model, "CPU", config)
        self._describe(compiled)
        if len(self._by_shape) >= self.max_shapes:
            self._by_shape.popitem(last=False)
        self._by_shape[shape] = (compiled, compiled.create_infer_request())
        logger.info("%s: compiled for input %s (%d shapes kept)", self.path.name, shape,
                    len(self._by_shape))  # fmt: skip
        self.compiled = compiled
        return self._by_shape[shape][1]

    def _check_signature(self, inputs_: Any, outputs_: Any) -> None:
        inputs = tuple(i.get_any_name() for i in inputs_)
        outputs = {n for o in outputs_ for n in o.get_names()}
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= outputs:
            raise ValueError(
                f"{self.path}: inputs {inputs} / outputs {sorted(outputs)} do not follow the "
                f"FOCUS ONNX contract (inputs {INPUT_NAMES}, outputs {OUTPUT_NAMES})"
            )

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = image.shape
        request = self._request_for(tuple(image.shape)) if self.static_shapes else self.request
        result = request.infer(
            {
                INPUT_NAMES[0]: np.ascontiguousarray(image, np.float32),
                INPUT_NAMES[1]: np.ascontiguousarray(edges, np.float32),
            }
        )
        # the request's output tensors are reused by the next call: copy them out
        probs = np.array(result[OUTPUT_NAMES[0]], dtype=np.float32, copy=True)
        logits = np.array(result[OUTPUT_NAMES[1]], dtype=np.float32, copy=True)
        return check_outputs(probs, logits, n, h, w)

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._by_shape.clear()
