"""TensorRT 10: a serialized engine run through cuda-python, torch-free.

An engine only runs on the GPU model and TensorRT version it was built with, so every engine
comes with its sidecar (``models.contract.EngineSidecar``, ``model.engine.json``) and is refused
with a clear message when either differs from the running ones.

Uses the name-based I/O API of TensorRT 10: ``set_input_shape`` per call (N, H and W are
dynamic), ``set_tensor_address`` and ``execute_async_v3`` on one CUDA stream. Device buffers
grow to the largest batch seen and are reused. ``tensorrt`` and ``cuda`` are imported only when
a predictor is constructed (or a helper below is called).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    BackendUnavailableError,
    EngineSidecar,
    SidecarError,
    check_outputs,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the TensorRT extra (pip install '.[tensorrt]': tensorrt and cuda-python) on a "
    "machine with an NVIDIA GPU and driver"
)


class EngineMismatchError(RuntimeError):
    """The engine was built for another GPU or TensorRT version (or lacks its sidecar)."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not available ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef,unused-ignore]
        except ImportError as exc:
            raise BackendUnavailableError(
                f"cuda-python is not available ({exc}); {INSTALL_HINT}"
            ) from exc
    return cudart


def cuda_check(result: Any) -> Any:
    """cuda-python calls return (error, *values); raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _handle(obj: Any) -> int:
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


def running_gpu(cudart: Any, device_index: int = 0) -> str:
    """Name of CUDA device ``device_index``; BackendUnavailableError when there is none."""
    try:
        count = cuda_check(cudart.cudaGetDeviceCount())
    except RuntimeError as exc:
        raise BackendUnavailableError(f"no usable CUDA device ({exc})") from exc
    if not count or device_index >= count:
        raise BackendUnavailableError(f"no CUDA device {device_index} (found {count or 0})")
    props = cuda_check(cudart.cudaGetDeviceProperties(device_index))
    name = props.name
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).rstrip("\0")


def check_engine_compatibility(
    engine_path: Path, meta: EngineSidecar, *, gpu_name: str, tensorrt_version: str
) -> None:
    """Refuse an engine built for another GPU model or TensorRT version."""
    problems = []
    if meta.gpu_name.strip() != gpu_name.strip():
        problems.append(f"it was built for GPU {meta.gpu_name!r}, this is {gpu_name!r}")
    if meta.tensorrt_version.strip() != tensorrt_version.strip():
        problems.append(
            f"it was built with TensorRT {meta.tensorrt_version}, this is TensorRT "
            f"{tensorrt_version}"
        )
    if problems:
        raise EngineMismatchError(
            f"refusing TensorRT engine {engine_path}: {'; '.join(problems)}. Engines only run on "
            "the GPU model and TensorRT version they were built with; rebuild it here with "
            "`focus export tensorrt` (or serve model.onnx with FOCUS_BACKEND=onnxruntime)"
        )


def select_engine(
    candidates: Sequence[Path], *, gpu_name: str, tensorrt_version: str
) -> tuple[Path, EngineSidecar]:
    """The first candidate built for this GPU and TensorRT version, else every reason why not."""
    if not candidates:
        raise EngineMismatchError("no TensorRT engine (model.engine) found")
    reasons = []
    for path in candidates:
        try:
            meta = EngineSidecar.load(path)
            check_engine_compatibility(
                path, meta, gpu_name=gpu_name, tensorrt_version=tensorrt_version
            )
            return path, meta
        except (EngineMismatchError, SidecarError) as exc:
            reasons.append(str(exc))
    raise EngineMismatchError(" | ".join(reasons))


class TensorRTPredictor:
    """The first compatible engine of ``candidates`` behind the :class:`Predictor` API."""

    device = "cuda"

    def __init__(self, candidates: Sequence[Path], *, device_index: int = 0) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        gpu_name = running_gpu(cudart, device_index)
        path, meta = select_engine(candidates, gpu_name=gpu_name, tensorrt_version=trt.__version__)
        self.path = path
        self.sidecar = meta
        self.max_batch = meta.max_batch
        self.precision = meta.precision
        self._trt = trt
        self._cudart = cudart
        cuda_check(cudart.cudaSetDevice(device_index))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineMismatchError(f"TensorRT could not deserialize {path} (see the log above)")
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != set(INPUT_NAMES) | set(OUTPUT_NAMES):
            raise ValueError(f"{path}: I/O tensors {sorted(names)} do not follow the ONNX contract")
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._context = self._engine.create_execution_context()
        self._stream = cuda_check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity)
        logger.info(
            "TensorRT engine %s (%s, max batch %d) on %s",
            path,
            meta.precision,
            meta.max_batch,
            gpu_name,
        )

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if ptr:
                cuda_check(self._cudart.cudaFree(ptr))
            ptr = _handle(cuda_check(self._cudart.cudaMalloc(nbytes)))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = image.shape
        if self.max_batch is not None and n > self.max_batch:
            raise ValueError(f"batch {n} exceeds the engine's max batch {self.max_batch}")
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        stream = self._stream
        hosts = {}
        for name, array in zip(INPUT_NAMES, (image, edges), strict=True):
            host = np.ascontiguousarray(array, dtype=self._dtypes[name])
            hosts[name] = host  # keep alive until the stream is synchronised
            if not self._context.set_input_shape(name, host.shape):
                raise ValueError(f"input {name} shape {host.shape} is outside the engine profile")
            ptr = self._device_buffer(name, host.nbytes)
            cuda_check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, stream))
            self._context.set_tensor_address(name, ptr)
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self._context.get_tensor_shape(name))
            out = np.empty(shape, dtype=self._dtypes[name])
            outputs[name] = out
            self._context.set_tensor_address(name, self._device_buffer(name, max(out.nbytes, 1)))
        if not self._context.execute_async_v3(_handle(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for name, out in outputs.items():
            ptr = self._buffers[name][0]
            cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, stream))
        cuda_check(cudart.cudaStreamSynchronize(stream))
        return check_outputs(outputs[OUTPUT_NAMES[0]], outputs[OUTPUT_NAMES[1]], n, h, w)

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
