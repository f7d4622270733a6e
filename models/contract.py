"""The artefact contract: every fact that more than one package relies on, in one place.

Torch-free and free of I/O at import. Training writes checkpoints, export writes graphs, engines
and model repositories, the service and the Triton ensemble read them: they all take the tensor
names, file names, sidecar schemas and input-geometry limits from here (DESIGN "Contracts").

* ONNX I/O: inputs ``image`` and ``edges`` float32 [N, 3, H, W] (normalised, padded to 32; the
  edge map), outputs ``class_probs`` float32 [N, 2, 2] and ``mask_logits`` float32
  [N, 2, H/4, W/4]; the model card in the graph metadata under :data:`METADATA_KEY`.
* Files of a model directory (a checkpoint, or a version of a model-repository task):
  ``focus.json`` + any of ``model.safetensors``, ``model.onnx`` (+ ``model.onnx.data`` when the
  weights exceed protobuf's 2 GiB), precision variants ``model.<precision>.onnx``, OpenVINO IR,
  ``model.engine`` with its sidecar ``model.engine.json``.
* :class:`Predictor`: numpy in, numpy out. Every way of running the network (the service's
  backends, export parity, evaluation) implements it, so they are interchangeable.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

# ----------------------------------------------------------------------------- ONNX I/O

INPUT_NAMES: tuple[str, str] = ("image", "edges")
OUTPUT_NAMES: tuple[str, str] = ("class_probs", "mask_logits")
METADATA_KEY = "focus.json"  # ONNX metadata_props key holding the model card
MASK_STRIDE = 4  # mask_logits are at 1/4 of the padded input

# ----------------------------------------------------------------------------- Triton ensemble
# `focus export triton` writes per task an ensemble preprocess -> network -> postprocess that
# takes encoded image bytes and returns the PNG mask; the geometry travels from preprocess to
# postprocess as int32 [2] (height, width) tensors. The Python models read these names too.
ENSEMBLE_INPUT = "image_bytes"  # TYPE_STRING [1]: one encoded image (PNG, JPEG, WebP, ...)
ENSEMBLE_OUTPUT = "mask_png"  # TYPE_STRING [1]: 8-bit grey PNG of the soft mask
SIZE_NAMES: tuple[str, str, str] = ("original_size", "resized_size", "padded_size")

# ----------------------------------------------------------------------------- files

CARD_FILE = "focus.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
ENGINE_SIDECAR_FILE = "model.engine.json"
PIPELINE_REPORT_FILE = "pipeline.json"
EXTERNAL_DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data
# Precision variants (models/precision.py): int8 ONNX (ONNX Runtime quantization) and OpenVINO
# IR (an .xml graph + .bin weights of the same stem) written beside model.onnx by `focus export`.
INT8_ONNX_FILE = "model.int8.onnx"
OPENVINO_XML_FILE = "model.xml"  # fp32 weights; run in f32 or bf16 by the precision hint
OPENVINO_INT8_XML_FILE = "model.int8.xml"  # NNCF post-training int8
OPENVINO_BIN_SUFFIX = ".bin"  # model.xml -> model.bin


def external_data_file(onnx_file: str) -> str:
    """The external-data file written beside an ONNX graph over 2 GiB (``model.onnx.data``)."""
    return onnx_file + EXTERNAL_DATA_SUFFIX


def onnx_variant_file(precision: str) -> str:
    """``model.onnx`` for fp32, ``model.<precision>.onnx`` for a reduced-precision variant."""
    return ONNX_FILE if precision == "fp32" else f"model.{precision}.onnx"


def openvino_weights_file(xml_file: str) -> str:
    """The weights file of an OpenVINO IR graph (``model.xml`` -> ``model.bin``)."""
    return xml_file.removesuffix(".xml") + OPENVINO_BIN_SUFFIX


def engine_sidecar_path(engine_path: str | Path) -> Path:
    """``.../model.engine`` -> ``.../model.engine.json`` (any engine file name + ``.json``)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# ----------------------------------------------------------------------------- geometry

SIZE_DIVISOR = 32  # padded H and W are multiples of the stride-32 level
# The exported graph declares H, W = 32 * k with 2 <= k <= 256 (k = 1 would let torch.export
# specialise the stride-32 level to size 1), and TensorRT profiles cover the same range.
MIN_INPUT_SIDE = 2 * SIZE_DIVISOR
MAX_INPUT_SIDE = 256 * SIZE_DIVISOR
MAX_EXPORT_BATCH = 64
# Largest decoded image (width x height) accepted by default, read from the header before the
# pixels are decoded: the service's FOCUS_MAX_PIXELS and the Triton preprocess's max_pixels.
DEFAULT_MAX_PIXELS = 40_000_000


def check_padded_shape(height: int, width: int) -> None:
    """Raise ``ValueError`` for a padded input shape outside the contract's range."""
    for name, side in (("height", height), ("width", width)):
        if side % SIZE_DIVISOR:
            raise ValueError(f"padded {name} {side} is not a multiple of {SIZE_DIVISOR}")
        if not MIN_INPUT_SIDE <= side <= MAX_INPUT_SIDE:
            raise ValueError(
                f"padded {name} {side} is outside the model's range "
                f"{MIN_INPUT_SIDE}..{MAX_INPUT_SIDE}"
            )


# ----------------------------------------------------------------------------- predictors


@runtime_checkable
class Predictor(Protocol):
    """One loaded network: ``infer`` maps a batch of inputs to the ONNX contract's outputs.

    ``image`` and ``edges`` are float32 [N, 3, H, W] (H, W multiples of 32); the result is
    ``(class_probs [N, 2, 2], mask_logits [N, 2, H/4, W/4])`` as float32 numpy arrays.
    Pre/post-processing is never a predictor's business, so every runtime gives the same mask
    through the same code (``models.processing``).
    """

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def check_outputs(
    class_probs: Any, mask_logits: Any, batch: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The outputs as float32 arrays, or ``RuntimeError`` when their shapes break the contract."""
    cp = np.asarray(class_probs, dtype=np.float32)
    ml = np.asarray(mask_logits, dtype=np.float32)
    low = (height // MASK_STRIDE, width // MASK_STRIDE)
    if cp.shape != (batch, 2, 2) or ml.shape[:2] != (batch, 2) or ml.shape[2:] != low:
        raise RuntimeError(
            f"the network returned class_probs {cp.shape} and mask_logits {ml.shape} for input "
            f"[{batch}, 3, {height}, {width}]; expected [{batch}, 2, 2] and "
            f"[{batch}, 2, {low[0]}, {low[1]}]"
        )
    return cp, ml


# ----------------------------------------------------------------------------- engine sidecar


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``path`` through a temporary sibling and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SidecarError(ValueError):
    """An engine sidecar that is missing or unreadable; the message says how to fix it."""


@dataclass(frozen=True)
class EngineSidecar:
    """``model.engine.json``: what a TensorRT engine was built for and from.

    An engine runs only on the GPU model and TensorRT version it was built with; the service
    refuses it otherwise. ``profile`` maps each input name to its min/opt/max [N, 3, H, W].
    """

    gpu_name: str
    tensorrt_version: str
    precision: str
    max_batch: int
    profile: Mapping[str, Mapping[str, tuple[int, ...]]]
    onnx: str = ""  # the graph's file name (relative: sidecars must not leak build paths)
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_name": self.gpu_name,
            "tensorrt_version": self.tensorrt_version,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "profile": {
                name: {k: list(v) for k, v in shapes.items()}
                for name, shapes in self.profile.items()
            },
            "onnx": self.onnx,
            "build_seconds": round(self.build_seconds, 1),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineSidecar:
        profile = {
            str(name): {str(k): tuple(int(x) for x in v) for k, v in shapes.items()}
            for name, shapes in dict(data.get("profile") or {}).items()
        }
        return cls(
            gpu_name=str(data["gpu_name"]),
            tensorrt_version=str(data["tensorrt_version"]),
            precision=str(data.get("precision", "unknown")),
            max_batch=int(data["max_batch"]),
            profile=profile,
            onnx=str(data.get("onnx", "")),
            build_seconds=float(data.get("build_seconds", 0.0)),
        )

    def input_range(self, name: str = INPUT_NAMES[0]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min, max) [N, 3, H, W] of input ``name``; ``KeyError`` without a recorded profile."""
        shapes = self.profile[name]
        return tuple(shapes["min"]), tuple(shapes["max"])

    def accepts(self, shape: tuple[int, ...], name: str = INPUT_NAMES[0]) -> bool:
        """Whether ``shape`` lies inside the recorded profile (True when none is recorded)."""
        if name not in self.profile:
            return True
        lo, hi = self.input_range(name)
        return all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))

    def save(self, engine_path: str | Path) -> Path:
        path = engine_sidecar_path(engine_path)
        write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        return path

    @classmethod
    def load(cls, engine_path: str | Path) -> EngineSidecar:
        path = engine_sidecar_path(engine_path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SidecarError(
                f"{engine_path}: no {path.name} beside the engine, so the GPU and TensorRT "
                "version it was built for are unknown; rebuild it with `focus export tensorrt`"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise SidecarError(f"{path}: unreadable engine sidecar ({exc})") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SidecarError(f"{path}: invalid engine sidecar ({exc!r})") from None


class BackendUnavailableError(RuntimeError):
    """A runtime cannot run here (library, device or artefact missing); says how to fix it."""


def engine_cache_path(cache: str | Path, task: str, version: int) -> Path:
    """Where an engine built on this machine for ``task`` version ``version`` is cached.

    Keyed by version: an engine of one version must never serve another's weights.
    """
    return Path(cache) / task / str(version) / ENGINE_FILE
