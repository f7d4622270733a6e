"""Choosing and constructing a backend for one model-repository entry (``FOCUS_BACKEND``).

``auto`` takes the fastest backend that can run here, in this order:

* ``FOCUS_DEVICE=cuda``: TensorRT (an engine built for this GPU + tensorrt + cuda-python), ONNX
  Runtime with the CUDA provider, PyTorch on CUDA; when none can use the GPU it falls back to
  the CPU chain with a warning, or fails with ``FOCUS_REQUIRE_GPU=true``;
* ``FOCUS_DEVICE=cpu``: ONNX Runtime, then PyTorch.

An explicitly named backend is used or fails with the reason; it is never swapped silently.
Backend modules are imported only when chosen, so torch is never imported unless the torch
backend is.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from models.contract import ENGINE_FILE, ONNX_FILE, WEIGHTS_FILE, engine_cache_path
from models.repository import ModelEntry
from service.backends.base import Backend, BackendUnavailableError

logger = logging.getLogger(__name__)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _onnxruntime(entry: ModelEntry, device: str, require_gpu: bool, threads: int) -> Backend:
    if not entry.has(ONNX_FILE):
        raise BackendUnavailableError(f"{entry.directory}: no {ONNX_FILE} for onnxruntime")
    from service.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        entry.directory / ONNX_FILE,
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


def _torch(entry: ModelEntry, device: str, require_gpu: bool, threads: int) -> Backend:
    if not entry.has(WEIGHTS_FILE):
        raise BackendUnavailableError(f"{entry.directory}: no {WEIGHTS_FILE} for torch")
    from service.backends.torch_backend import TorchBackend

    return TorchBackend(
        entry.directory,
        entry.card,
        device=device,
        require_gpu=require_gpu,
        intra_op_threads=threads,
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


def create_backend(
    entry: ModelEntry,
    *,
    backend: str = "auto",
    device: str = "cpu",
    require_gpu: bool = False,
    intra_op_threads: int = 0,
    engine_cache: Path | str = Path("/var/cache/focus/engines"),
) -> Backend:
    """Load ``entry`` with the requested backend (see the module docstring for ``auto``)."""
    engine_cache = Path(engine_cache)
    if backend == "onnxruntime":
        return _onnxruntime(entry, device, require_gpu, intra_op_threads)
    if backend == "tensorrt":
        return _tensorrt(entry, engine_cache)
    if backend == "torch":
        return _torch(entry, device, require_gpu, intra_op_threads)
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r}; use auto, onnxruntime, tensorrt or torch")
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
    if entry.has(ONNX_FILE):
        return _onnxruntime(entry, "cpu", False, intra_op_threads)
    if entry.has(WEIGHTS_FILE):
        return _torch(entry, "cpu", False, intra_op_threads)
    raise BackendUnavailableError(
        f"{entry.directory}: nothing runnable on the CPU (has {', '.join(entry.artefacts)}); "
        "an engine needs FOCUS_DEVICE=cuda"
    )
