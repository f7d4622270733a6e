"""Precision variants of one model and their accuracy gates (torch-free, part of ``focus.json``).

fp32 (``model.onnx`` on ONNX Runtime, or the checkpoint in PyTorch) is the reference. Every
other way of running the same weights (int8 ONNX, OpenVINO f32 / bf16 / int8, PyTorch bf16) is a
*variant*: a runtime, a precision and the artefact it reads. A variant is served only when its
*gate* passed: the variant was compared with fp32 through the shared post-processing on at least
:data:`MIN_GATE_IMAGES` images, soft-mask mean |diff| <= :data:`GATE_MAX_MEAN_ABS` and, on
*trained* models only, binary-mask IoU >= :data:`GATE_MIN_IOU`. With untrained (random) weights
the two class scores are near ties and the evaluator's binary rule flips on tiny perturbations,
so there the IoU is recorded but not enforced (issue 17); the gate says which it was.

The gates live in the model card, ``focus.json`` -> ``"precision_variants"``, one entry per
variant name; writers are ``focus export onnx --precision int8`` and ``focus export openvino``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.contract import (
    INT8_ONNX_FILE,
    ONNX_FILE,
    OPENVINO_INT8_XML_FILE,
    OPENVINO_XML_FILE,
    WEIGHTS_FILE,
)

GATE_MAX_MEAN_ABS = 0.01
GATE_MIN_IOU = 0.99
MIN_GATE_IMAGES = 6
CARD_KEY = "precision_variants"  # focus.json key holding {variant name: Variant}

RUNTIMES = ("onnxruntime", "openvino", "torch")
# (runtime, precision) -> the artefact file it reads, in the order ``auto`` lists candidates.
# OpenVINO reads its IR when present, else model.onnx (see :func:`openvino_source`).
ARTEFACT: Mapping[tuple[str, str], str] = {
    ("onnxruntime", "fp32"): ONNX_FILE,
    ("onnxruntime", "int8"): INT8_ONNX_FILE,
    ("openvino", "fp32"): OPENVINO_XML_FILE,
    ("openvino", "bf16"): OPENVINO_XML_FILE,
    ("openvino", "int8"): OPENVINO_INT8_XML_FILE,
    ("torch", "fp32"): WEIGHTS_FILE,
    ("torch", "bf16"): WEIGHTS_FILE,
    ("torch", "fp16"): WEIGHTS_FILE,
}
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def variant_name(runtime: str, precision: str) -> str:
    """``onnxruntime-int8``, ``openvino-bf16``: the key of a variant in ``focus.json``."""
    return f"{runtime}-{precision}"


def is_reference(runtime: str, precision: str) -> bool:
    """fp32 is what every gate compares against: it needs no gate of its own."""
    return precision == "fp32"


@dataclass(frozen=True)
class PrecisionGate:
    """What a variant measured against fp32, and whether that passes.

    ``soft_max_abs`` / ``soft_mean_abs``: worst over the images of the max / mean |diff| of the
    soft masks at the original size; ``min_iou``: worst binary-mask IoU. ``iou_enforced`` is
    True only for trained models (``trained_by`` says how that was known).
    """

    soft_max_abs: float
    soft_mean_abs: float
    min_iou: float
    images: int
    image_set: str  # which images (generator, seed, sizes, batch sizes)
    reference: str  # what fp32 ran on (e.g. "onnxruntime fp32 model.onnx")
    model: str  # which model: task, preset, version
    iou_enforced: bool
    trained_by: str = ""  # why the model counts as trained (or not)
    max_mean_abs: float = GATE_MAX_MEAN_ABS
    required_iou: float = GATE_MIN_IOU
    runtime_version: str = ""
    measured_at: str = ""  # UTC ISO date-time

    def failures(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        out = []
        if self.images < MIN_GATE_IMAGES:
            out.append(f"only {self.images} images (< {MIN_GATE_IMAGES})")
        if not self.soft_mean_abs <= self.max_mean_abs:  # NaN fails
            out.append(f"soft mean |diff| {self.soft_mean_abs:.4g} > {self.max_mean_abs:g}")
        if self.iou_enforced and not self.min_iou >= self.required_iou:
            out.append(f"binary IoU {self.min_iou:.4f} < {self.required_iou:g}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        iou = "" if self.iou_enforced else " (not enforced: untrained weights)"
        return (
            f"soft max |diff| {self.soft_max_abs:.3g}, soft mean |diff| "
            f"{self.soft_mean_abs:.3g} (<= {self.max_mean_abs:g}), binary IoU min "
            f"{self.min_iou:.4f}{iou} over {self.images} images vs {self.reference}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "soft_max_abs": _finite(self.soft_max_abs),
            "soft_mean_abs": _finite(self.soft_mean_abs),
            "min_iou": _finite(self.min_iou),
            "images": self.images,
            "image_set": self.image_set,
            "reference": self.reference,
            "model": self.model,
            "iou_enforced": self.iou_enforced,
            "trained_by": self.trained_by,
            "max_mean_abs": self.max_mean_abs,
            "required_iou": self.required_iou,
            "runtime_version": self.runtime_version,
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionGate:
        def num(key: str) -> float:
            value = data.get(key)
            return float("nan") if value is None else float(value)

        return cls(
            soft_max_abs=num("soft_max_abs"),
            soft_mean_abs=num("soft_mean_abs"),
            min_iou=num("min_iou"),
            images=int(data["images"]),
            image_set=str(data.get("image_set", "")),
            reference=str(data.get("reference", "")),
            model=str(data.get("model", "")),
            iou_enforced=bool(data["iou_enforced"]),
            trained_by=str(data.get("trained_by", "")),
            max_mean_abs=float(data.get("max_mean_abs", GATE_MAX_MEAN_ABS)),
            required_iou=float(data.get("required_iou", GATE_MIN_IOU)),
            runtime_version=str(data.get("runtime_version", "")),
            measured_at=str(data.get("measured_at", "")),
        )


def _finite(value: float) -> float | None:
    """JSON has no NaN: a non-finite measure is written as null (and fails the gate)."""
    return value if value == value and abs(value) != float("inf") else None


@dataclass(frozen=True)
class Variant:
    """One precision variant of a model: runtime, precision, artefact, how made, its gate."""

    runtime: str
    precision: str
    artefact: str  # file name inside the model directory
    gate: PrecisionGate | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)  # how it was made (quantization...)

    @property
    def name(self) -> str:
        return variant_name(self.runtime, self.precision)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "artefact": self.artefact,
            "recipe": dict(self.recipe),
            "gate": self.gate.to_dict() if self.gate is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Variant:
        gate = data.get("gate")
        return cls(
            runtime=str(data["runtime"]),
            precision=str(data["precision"]),
            artefact=str(data["artefact"]),
            gate=PrecisionGate.from_dict(gate) if gate else None,
            recipe=dict(data.get("recipe") or {}),
        )


def variants_from_card_dict(data: Mapping[str, Any]) -> tuple[Variant, ...]:
    """The ``precision_variants`` of a parsed ``focus.json`` (none when absent)."""
    raw = data.get(CARD_KEY) or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"focus.json {CARD_KEY!r} must be an object keyed by variant name")
    return tuple(Variant.from_dict(v) for _, v in sorted(raw.items()))


def variants_to_card_dict(variants: tuple[Variant, ...]) -> dict[str, Any]:
    return {v.name: v.to_dict() for v in variants}


def with_variant(variants: tuple[Variant, ...], new: Variant) -> tuple[Variant, ...]:
    """``variants`` with ``new`` added, replacing one of the same name."""
    return (*(v for v in variants if v.name != new.name), new)


def find_variant(variants: tuple[Variant, ...], runtime: str, precision: str) -> Variant | None:
    name = variant_name(runtime, precision)
    return next((v for v in variants if v.name == name), None)


def trained_evidence(provenance: Mapping[str, Any]) -> str:
    """Why a card's weights count as trained ('' when they do not, e.g. random or harness).

    ``focus train`` writes ``source: focus train``; ``focus pull`` records the Hub release.
    An imported reference-harness file (``imported_from`` only) is random: not trained.
    """
    if provenance.get("source") == "focus train":
        return f"focus train, step {provenance.get('step', '?')}"
    for key, value in provenance.items():
        if key.startswith("hub") and value:
            return f"released checkpoint ({key})"
    return ""


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process.

    A variant records the sha256 of the ``model.onnx`` its gate was measured against
    (``recipe.fp32_sha256``): a gate never vouches for a graph it did not see.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


class GateRefusedError(RuntimeError):
    """A variant whose gate failed (or was never measured) was asked for without forcing it."""


def check_gate(variant: Variant | None, runtime: str, precision: str, where: str) -> str:
    """Refuse an ungated or failed variant with its numbers; returns a one-line gate summary.

    fp32 needs no gate; when one was measured (OpenVINO fp32 vs ONNX Runtime fp32) it counts.
    """
    if is_reference(runtime, precision) and (variant is None or variant.gate is None):
        return "fp32 reference (no gate needed)"
    name = variant_name(runtime, precision)
    if variant is None or variant.gate is None:
        raise GateRefusedError(
            f"{where}: {name} has no accuracy gate in focus.json ({CARD_KEY}); build it with "
            "`focus export onnx --precision int8` / `focus export openvino`, or set "
            "FOCUS_FORCE_UNGATED=true to serve it unchecked"
        )
    gate = variant.gate
    if not gate.passed:
        raise GateRefusedError(
            f"{where}: {name} failed its accuracy gate ({'; '.join(gate.failures())}); measured "
            f"{gate.summary()}. Set FOCUS_FORCE_UNGATED=true to serve it anyway"
        )
    return f"gate passed: {gate.summary()}"
