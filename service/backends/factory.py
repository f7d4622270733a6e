"""Choosing and constructing a backend for one model-repository entry (``FOCUS_BACKEND``).

``auto`` takes the fastest backend that can run here:

* ``FOCUS_DEVICE=cuda``: TensorRT (an engine built for this GPU + tensorrt + cuda-python), ONNX
  Runtime with the CUDA provider, PyTorch on CUDA; when none can use the GPU it falls back to
  the CPU chain with a warning, or fails with ``FOCUS_REQUIRE_GPU=true``;
* ``FOCUS_DEVICE=cpu``: every *gated* CPU variant the version holds (ONNX Runtime fp32 and int8,
  OpenVINO fp32 / bf16 / int8, see ``models.precision``) is loaded in turn and timed on this
  machine (one warm-up, then the best of ``FOCUS_AUTO_TIMED_RUNS`` calls at the card's input
  size); the fastest is kept and the choice is logged with every time and every refusal. Without
  ``model.onnx``: PyTorch.

A precision variant (``FOCUS_PRECISION`` other than fp32) is served only when its accuracy gate
in ``focus.json`` passed and was measured against this ``model.onnx``; otherwise it is refused
with the measured numbers, unless ``FOCUS_FORCE_UNGATED=true``.

An explicitly named backend is used or fails with the reason; it is never swapped silently.
Backend modules are imported only when chosen, so torch is never imported unless the torch
backend is.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.contract import (
    ENGINE_FILE,
    ONNX_FILE,
    OPENVINO_XML_FILE,
    WEIGHTS_FILE,
    engine_cache_path,
)
from models.precision import (
    ARTEFACT,
    GateRefusedError,
    check_gate,
    file_sha256,
    find_variant,
    variant_name,
)
from models.repository import ModelEntry
from service.backends.base import Backend, BackendUnavailableError
from service.settings import Settings

logger = logging.getLogger(__name__)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _onnxruntime(
    entry: ModelEntry, device: str, require_gpu: bool, threads: int, file: str = ONNX_FILE
) -> Backend:
    if not entry.has(file):
        raise BackendUnavailableError(f"{entry.directory}: no {file} for onnxruntime")
    from service.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        entry.directory / file,
        entry.card,
        device=device,
        require_gpu=require_gpu,
        intra_op_threads=threads,
    )


def _tensorrt(entry: ModelEntry, engine_cache: Path) -> Backend:
    from service.backends.tensorrt import TensorRTBackend, engine_candidates

    candidates = engine_candidates(entry.directory, engine_cache, entry.task, entry.version)
    if not candidates:
        raise BackendUnavailableError(
            f"no {ENGINE_FILE} for {entry.task} version {entry.version} in {entry.directory} or "
            f"{engine_cache_path(engine_cache, entry.task, entry.version).parent}"
        )
    return TensorRTBackend(candidates, entry.card)


def _torch(
    entry: ModelEntry, device: str, require_gpu: bool, threads: int, precision: str = "fp32"
) -> Backend:
    if not entry.has(WEIGHTS_FILE):
        raise BackendUnavailableError(f"{entry.directory}: no {WEIGHTS_FILE} for torch")
    from service.backends.torch_backend import TorchBackend

    return TorchBackend(
        entry.directory,
        entry.card,
        device=device,
        require_gpu=require_gpu,
        intra_op_threads=threads,
        precision=precision,
    )


def _auto_gpu(
    entry: ModelEntry, threads: int, engine_cache: Path
) -> tuple[Backend | None, list[str]]:
    """Try the GPU backends in speed order; returns the first that loads and the reasons."""
    reasons: list[str] = []
    if _installed("tensorrt"):
        try:
            return _tensorrt(entry, engine_cache), reasons
        except (BackendUnavailableError, RuntimeError) as exc:
            reasons.append(f"tensorrt: {exc}")
    else:
        reasons.append("tensorrt: not installed")
    if entry.has(ONNX_FILE):
        from service.backends.onnxruntime import cuda_provider_available

        if cuda_provider_available():
            try:
                return _onnxruntime(entry, "cuda", True, threads), reasons
            except BackendUnavailableError as exc:
                reasons.append(f"onnxruntime: {exc}")
        else:
            reasons.append("onnxruntime: no CUDAExecutionProvider")
    if entry.has(WEIGHTS_FILE) and _installed("torch"):
        try:
            return _torch(entry, "cuda", True, threads), reasons
        except BackendUnavailableError as exc:
            reasons.append(f"torch: {exc}")
    return None, reasons


@dataclass(frozen=True)
class VariantOptions:
    """How precision variants are chosen (FOCUS_PRECISION, FOCUS_FORCE_UNGATED, ...)."""

    precision: str = "auto"  # auto | fp32 | bf16 | fp16 | int8
    force_ungated: bool = False
    openvino_cache: Path | None = None  # compiled-model cache; None: compile at every start
    timed_runs: int = 3  # FOCUS_BACKEND=auto: timed calls per candidate after one warm-up


def _gate(entry: ModelEntry, runtime: str, precision: str, options: VariantOptions) -> str:
    """The gate summary of a variant, or GateRefusedError (unless forced)."""
    variant = find_variant(entry.card.variants, runtime, precision)
    where = f"{entry.task} version {entry.version}"
    try:
        summary = check_gate(variant, runtime, precision, where)
        recorded = (variant.recipe.get("fp32_sha256") if variant is not None else None) or ""
        onnx = entry.directory / ONNX_FILE
        if recorded and onnx.is_file() and file_sha256(onnx) != recorded:
            raise GateRefusedError(
                f"{where}: the gate of {variant_name(runtime, precision)} was measured against "
                f"another {ONNX_FILE} (sha256 {recorded[:12]}, now {file_sha256(onnx)[:12]}); "
                "rebuild the variant, or set FOCUS_FORCE_UNGATED=true"
            )
        return summary
    except GateRefusedError as exc:
        if not options.force_ungated:
            raise
        logger.warning("FOCUS_FORCE_UNGATED=true: serving anyway: %s", exc)
        return f"FORCED despite: {exc}"


def _openvino_file(entry: ModelEntry, precision: str) -> str:
    """The artefact OpenVINO reads: the one the gate was measured on, else the IR, else ONNX."""
    variant = find_variant(entry.card.variants, "openvino", precision)
    candidates = [variant.artefact] if variant is not None else []
    candidates.append(ARTEFACT[("openvino", precision)])
    if precision != "int8":
        candidates += [OPENVINO_XML_FILE, ONNX_FILE]
    for name in candidates:
        if (entry.directory / name).is_file():
            return name
    raise BackendUnavailableError(
        f"{entry.directory}: no {' or '.join(dict.fromkeys(candidates))} for openvino {precision}"
    )


def _openvino(entry: ModelEntry, precision: str, threads: int, options: VariantOptions) -> Backend:
    if not _installed("openvino"):
        raise BackendUnavailableError("openvino is not installed (pip install 'openvino>=2026.4')")
    file = _openvino_file(entry, precision)
    from service.backends.openvino import OpenVinoBackend, openvino_cache_dir

    cache = None
    if options.openvino_cache is not None:
        cache = openvino_cache_dir(
            options.openvino_cache, entry.task, entry.version, file, precision
        )
    return OpenVinoBackend(
        entry.directory / file,
        entry.card,
        precision=precision,
        intra_op_threads=threads,
        cache_dir=cache,
    )


RUNTIME_PRECISIONS = {
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "torch": ("fp32", "bf16", "fp16"),
}


def _load_variant(
    entry: ModelEntry,
    runtime: str,
    precision: str,
    device: str,
    require_gpu: bool,
    threads: int,
    options: VariantOptions,
) -> Backend:
    """One (runtime, precision), gate checked first (nothing is loaded for a refused one)."""
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise BackendUnavailableError(
            f"{runtime} has no {precision} variant; it runs "
            f"{', '.join(RUNTIME_PRECISIONS[runtime])}"
        )
    if runtime == "torch" and precision != "fp32":
        variant = find_variant(entry.card.variants, runtime, precision)
        if variant is None:  # autocast is a setting, not an artefact: no gate to require
            gate = "no recorded gate (torch autocast, chosen explicitly)"
            logger.warning("%s: torch %s has no recorded accuracy gate", entry.task, precision)
        else:
            gate = _gate(entry, runtime, precision, options)
    else:
        gate = _gate(entry, runtime, precision, options)
    if runtime == "onnxruntime":
        backend = _onnxruntime(
            entry, device, require_gpu, threads, ARTEFACT[("onnxruntime", precision)]
        )
    elif runtime == "openvino":
        backend = _openvino(entry, precision, threads, options)
    else:
        backend = _torch(entry, device, require_gpu, threads, precision)
    backend.precision = precision
    backend.gate = gate
    return backend


def _time_backend(backend: Backend, runs: int) -> float:
    """Best-of-``runs`` seconds per call at the card's input size (square), after a warm-up.

    The minimum, not the median: on a shared machine other processes only ever add time, so
    the fastest call is the best estimate of what the variant costs.
    """
    card = backend.card
    side = -(-card.input_short_side // card.size_divisibility) * card.size_divisibility
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, side, side)).astype(np.float32)
    edges = (rng.random((1, 3, side, side)) > 0.9).astype(np.float32)
    backend.infer(image, edges)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        backend.infer(image, edges)
        times.append(time.perf_counter() - start)
    return min(times)


def _auto_cpu(
    entry: ModelEntry, threads: int, options: VariantOptions
) -> Backend:
    """The fastest gated CPU variant, timed here; logs the times and every refusal."""
    wanted = options.precision
    candidates = [
        (runtime, precision)
        for runtime in ("onnxruntime", "openvino")
        for precision in RUNTIME_PRECISIONS[runtime]
        if wanted in ("auto", precision)
    ]
    if not entry.has(ONNX_FILE) and not any(entry.has(a) for a in (OPENVINO_XML_FILE,)):
        candidates = []
    notes: list[str] = []
    viable = []
    for runtime, precision in candidates:
        name = variant_name(runtime, precision)
        built = find_variant(entry.card.variants, runtime, precision) is not None
        if (runtime, precision) != ("onnxruntime", "fp32") and not built:
            notes.append(f"{name}: not built")
        elif runtime == "openvino" and not _installed("openvino"):
            notes.append(f"{name}: openvino not installed")
        else:
            viable.append((runtime, precision))
    best: tuple[float, Backend] | None = None
    for runtime, precision in viable:
        name = variant_name(runtime, precision)
        try:
            backend = _load_variant(entry, runtime, precision, "cpu", False, threads, options)
        except (GateRefusedError, BackendUnavailableError, ValueError) as exc:
            notes.append(f"{name}: refused: {exc}")
            continue
        if len(viable) == 1:
            best = (float("nan"), backend)
            break
        seconds = _time_backend(backend, options.timed_runs)
        notes.append(f"{name}: {seconds * 1e3:.1f} ms")
        if best is None or seconds < best[0]:
            if best is not None:
                best[1].close()
            best = (seconds, backend)
        else:
            backend.close()
    if best is None:
        if entry.has(WEIGHTS_FILE) and wanted in ("auto", "fp32", "bf16"):
            precision = "fp32" if wanted == "auto" else wanted
            backend = _load_variant(entry, "torch", precision, "cpu", False, threads, options)
            backend.selection = "auto: no ONNX / OpenVINO variant could serve; " + "; ".join(notes)
            return backend
        raise BackendUnavailableError(
            f"{entry.directory}: nothing runnable on the CPU (has {', '.join(entry.artefacts)}"
            + (f"; {'; '.join(notes)}" if notes else "")
            + "); an engine needs FOCUS_DEVICE=cuda"
        )
    seconds, backend = best
    why = "the only candidate" if seconds != seconds else f"fastest at {seconds * 1e3:.1f} ms"
    backend.selection = (
        f"auto: {variant_name(backend.name, backend.precision)} ({why}); " + "; ".join(notes)
    )
    logger.info("%s version %s: %s", entry.task, entry.version, backend.selection)
    return backend


def create_backend(
    entry: ModelEntry,
    *,
    backend: str = "auto",
    device: str = "cpu",
    require_gpu: bool = False,
    intra_op_threads: int = 0,
    engine_cache: Path | str = Path("/var/cache/focus/engines"),
    variants: VariantOptions | None = None,
) -> Backend:
    """Load ``entry`` with the requested backend (see the module docstring for ``auto``)."""
    engine_cache = Path(engine_cache)
    options = variants or VariantOptions()
    explicit = "fp32" if options.precision == "auto" else options.precision
    if backend in ("onnxruntime", "openvino", "torch"):
        return _load_variant(
            entry, backend, explicit, device, require_gpu, intra_op_threads, options
        )
    if backend == "tensorrt":
        return _tensorrt(entry, engine_cache)
    if backend != "auto":
        raise ValueError(
            f"unknown backend {backend!r}; use auto, onnxruntime, openvino, tensorrt or torch"
        )
    if device == "cuda":
        chosen, reasons = _auto_gpu(entry, intra_op_threads, engine_cache)
        if chosen is not None:
            return chosen
        if require_gpu:
            raise BackendUnavailableError(
                f"FOCUS_REQUIRE_GPU=true but no GPU backend can serve {entry.task}: "
                + "; ".join(reasons)
            )
        logger.warning("no GPU backend for %s (%s); using the CPU", entry.task, "; ".join(reasons))
    return _auto_cpu(entry, intra_op_threads, options)


def create_backend_from_settings(
    entry: ModelEntry, settings: Settings, threads: int | None = None
) -> Backend:
    """:func:`create_backend` with every knob from the service settings (``threads``: the
    runtime's threads, default the service's ``inference_threads``)."""
    return create_backend(
        entry,
        backend=settings.backend,
        device=settings.device,
        require_gpu=settings.require_gpu,
        intra_op_threads=settings.inference_threads if threads is None else threads,
        engine_cache=settings.engine_cache,
        variants=VariantOptions(
            precision=settings.precision,
            force_ungated=settings.force_ungated,
            openvino_cache=settings.openvino_cache,
            timed_runs=settings.auto_timed_runs,
        ),
    )
