"""OpenVINO on the CPU: a FOCUS graph (``model.onnx`` or IR ``model.xml``) as a Predictor.

Torch-free. The inference precision is always set explicitly (``INFERENCE_PRECISION_HINT``):
left alone, OpenVINO runs bf16 by itself on CPUs with native bf16 (AVX512-BF16, AMX), which is a
different model from the fp32 one the gate compares against. Compiled models go to an on-disk
cache (``CACHE_DIR``) so a restart imports the compiled blob instead of compiling again; give
each (artefact, precision) its own folder: OpenVINO 2026.4 crashes on the first inference of the
second of two models compiled from one graph into one shared cache folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.contract import INPUT_NAMES, OUTPUT_NAMES, BackendUnavailableError, check_outputs

logger = logging.getLogger(__name__)

# our precision names -> OpenVINO's inference-precision hint. int8 IR: the quantized ops run in
# int8 whatever the hint; the hint sets the precision of everything NNCF left unquantized.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}


T = TypeVar("T")


def on_own_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a thread of its own that ends with it; return its result or raise its error.

    Every call that loads OpenVINO's CPU plugin or compiles a model must go through here. The
    plugin installs its own alternate signal stack (``sigaltstack``) on the calling thread and
    unmaps it when the plugin is released, from whichever thread releases it (restoring the old
    one only when that is the same thread). Done on the main thread, the main thread's signal
    stack is left pointing at unmapped memory once a compiled model is garbage-collected on
    another thread, and the next Python signal handler that runs there (SIGTERM in ``focus
    serve``, SIGCHLD, SIGINT) kills the process with SIGSEGV, before faulthandler can say a word.
    A thread that ends after compiling takes that signal stack with it.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="openvino-compile")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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
        on_own_thread(lambda: self._compile(ov, precision, threads, cache_dir, extra_config))

    def _compile(
        self,
        ov: Any,
        precision: str,
        threads: int,
        cache_dir: str | Path | None,
        extra_config: dict[str, Any] | None,
    ) -> None:
        """Make the core, compile the model and its infer request (see :func:`on_own_thread`)."""
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
        try:
            self.compiled: Any = self.core.compile_model(str(self.path), "CPU", config)
        except RuntimeError as exc:
            raise BackendUnavailableError(f"OpenVINO could not compile {self.path}: {exc}") from exc
        self.precision = precision
        hint_type = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        # what OpenVINO will really run (e.g. "bf16", "f32"), recorded in cards and /tasks
        self.inference_precision = str(getattr(hint_type, "to_string", lambda: hint_type)())
        try:
            self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        except RuntimeError:
            self.loaded_from_cache = False
        self._check_signature()
        self.request = self.compiled.create_infer_request()

    def _check_signature(self) -> None:
        inputs = tuple(i.get_any_name() for i in self.compiled.inputs)
        outputs = {n for o in self.compiled.outputs for n in o.get_names()}
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= outputs:
            raise ValueError(
                f"{self.path}: inputs {inputs} / outputs {sorted(outputs)} do not follow the "
                f"FOCUS ONNX contract (inputs {INPUT_NAMES}, outputs {OUTPUT_NAMES})"
            )

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = image.shape
        result = self.request.infer(
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
