"""Numeric parity between two ways of running one FOCUS network, end to end.

Every exported artefact is checked the same way: the same uint8 images go through the shared
pre-processing (``models.processing.preprocess_with_card``), through a *reference* predictor
(PyTorch for an ONNX export, ONNX Runtime for a TensorRT engine) and a *candidate* predictor, and
through the shared post-processing; the soft and binary masks at the original image size are
compared. Images are random noise, smooth random fields and synthetic task scenes
(``models.synth``), at two aspect ratios (landscape and portrait), run one by one (batch 1)
and as a batch of 4 of the same padded shape.

Tolerances (issue 5): fp32 soft-mask max |diff| <= 1e-4; fp16/bf16 soft-mask mean |diff| <= 1e-2
and IoU of the binary masks >= 0.99. :func:`check_parity` raises :class:`ParityError` carrying
the measured numbers when a tolerance is exceeded; it never just prints.

Torch-free: a predictor is any :class:`models.contract.Predictor` (``infer(image, edges) ->
(class_probs, mask_logits)`` on float32 numpy arrays): ``models.predict.TorchPredictor`` for
PyTorch, ``models.runtime.onnxruntime.OnnxRuntimePredictor`` (the session the service runs) for
ONNX Runtime; :func:`torch_predictor` imports torch only when called.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.config import ModelCard
from models.contract import Predictor
from models.processing import postprocess, preprocess_with_card
from models.synth import sample

logger = logging.getLogger(__name__)

# (height, width) of the original test images: one landscape, one portrait, neither a multiple
# of 32 after resizing, so padding and the crop in the post-processing are exercised.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((300, 410), (430, 290))
BATCH = 4  # images per size; also the batched run's batch size
SYNTH_TASKS = ("salient", "camouflage")


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria; ``None`` leaves a measure unchecked."""

    name: str
    soft_max_abs: float | None = None
    soft_mean_abs: float | None = None
    min_iou: float | None = None


FP32 = Tolerance("fp32", soft_max_abs=1e-4)
FP16 = Tolerance("fp16", soft_mean_abs=1e-2, min_iou=0.99)


def tolerance_for(precision: str) -> Tolerance:
    """fp32 -> FP32; fp16 and bf16 -> FP16 (the issue's reduced-precision tolerances)."""
    if precision == "fp32":
        return FP32
    if precision in ("fp16", "bf16"):
        return Tolerance(precision, FP16.soft_max_abs, FP16.soft_mean_abs, FP16.min_iou)
    raise ValueError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")


@dataclass
class ParityReport:
    """What was measured: worst case over every image and batch size."""

    tolerance: Tolerance
    images: int = 0
    runs: int = 0  # (image, batch size) pairs compared
    soft_max_abs: float = 0.0  # max over images of max |soft_ref - soft_cand|
    soft_mean_abs: float = 0.0  # max over images of mean |soft_ref - soft_cand|
    min_iou: float = 1.0  # min over images of IoU(binary_ref, binary_cand)
    logits_max_abs: float = 0.0  # raw mask logits, for diagnosis only
    probs_max_abs: float = 0.0  # raw class probabilities, for diagnosis only
    non_finite: set[str] = field(default_factory=set)  # which side produced NaN / inf
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        return (
            f"{self.tolerance.name} parity over {self.images} images x batch 1 and {BATCH} "
            f"({self.runs} masks): soft max |diff| {self.soft_max_abs:.3g}, soft mean |diff| "
            f"{self.soft_mean_abs:.3g}, binary IoU min {self.min_iou:.6f}; raw mask logits max "
            f"|diff| {self.logits_max_abs:.3g}, class probs max |diff| {self.probs_max_abs:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance.name,
            "images": self.images,
            "runs": self.runs,
            "soft_max_abs": self.soft_max_abs,
            "soft_mean_abs": self.soft_mean_abs,
            "min_iou": self.min_iou,
            "logits_max_abs": self.logits_max_abs,
            "probs_max_abs": self.probs_max_abs,
            "ok": self.ok,
        }


class ParityError(AssertionError):
    """The candidate does not compute the reference's function within tolerance."""

    def __init__(self, report: ParityReport, what: str = "") -> None:
        self.report = report
        prefix = f"{what}: " if what else ""
        super().__init__(
            f"{prefix}parity FAILED: {'; '.join(report.failures)}. Measured: {report.summary()}"
        )


# ----------------------------------------------------------------------------- images


def _smooth_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field with a bright blob: a plausible 'object' for any model."""
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    blob = np.exp(-(((yy - cy) / (0.2 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2))
    img = img * (1 - blob[..., None]) + rng.uniform(0, 255, 3) * blob[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def parity_images(
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, seed: int = 0
) -> list[list[np.ndarray]]:
    """``BATCH`` uint8 RGB images per size: uniform noise, a smooth field, synthetic scenes.

    All images of one size share their padded shape, so they form one batch of ``BATCH``.
    """
    groups = []
    for k, (h, w) in enumerate(sizes):
        rng = np.random.default_rng([seed, k])
        images = [
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            _smooth_field(rng, h, w),
        ]
        for t, task in enumerate(SYNTH_TASKS):
            rgb, _ = sample(task, index=k * len(SYNTH_TASKS) + t, seed=seed, size=min(h, w))
            images.append(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
        groups.append(images[:BATCH])
    return groups


# ----------------------------------------------------------------------------- comparison


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _run(predict: Predictor, prepared: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    image = np.stack([p.image for p in prepared]).astype(np.float32)
    edges = np.stack([p.edges for p in prepared]).astype(np.float32)
    probs, logits = predict.infer(image, edges)
    return np.asarray(probs, np.float32), np.asarray(logits, np.float32)


def measure_parity(
    reference: Predictor,
    candidate: Predictor,
    card: ModelCard,
    tolerance: Tolerance,
    images: Sequence[Sequence[np.ndarray]] | None = None,
) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on ``images`` (groups of one padded shape)."""
    groups = parity_images() if images is None else images
    report = ParityReport(tolerance=tolerance)
    for group in groups:
        prepared = [preprocess_with_card(rgb, card) for rgb in group]
        shapes = {p.padded_size for p in prepared}
        if len(shapes) != 1:
            raise ValueError(f"a parity group must share one padded shape, got {sorted(shapes)}")
        report.images += len(prepared)
        runs: list[list[tuple[int, ...]]] = [[(i,) for i in range(len(prepared))]]  # batch 1
        if len(prepared) > 1:
            runs.append([tuple(range(len(prepared)))])  # one batch of all
        for batches in runs:
            for idx in batches:
                chunk = [prepared[i] for i in idx]
                ref_probs, ref_logits = _run(reference, chunk)
                cand_probs, cand_logits = _run(candidate, chunk)
                for name, outputs in (
                    ("reference", (ref_probs, ref_logits)),
                    ("candidate", (cand_probs, cand_logits)),
                ):
                    if not all(np.isfinite(o).all() for o in outputs):
                        report.non_finite.add(name)
                report.logits_max_abs = max(
                    report.logits_max_abs, float(np.abs(ref_logits - cand_logits).max())
                )
                report.probs_max_abs = max(
                    report.probs_max_abs, float(np.abs(ref_probs - cand_probs).max())
                )
                for j, p in enumerate(chunk):
                    sizes = (p.padded_size, p.resized_size, p.original_size)
                    soft_r, bin_r = postprocess(ref_probs[j], ref_logits[j], *sizes)
                    soft_c, bin_c = postprocess(cand_probs[j], cand_logits[j], *sizes)
                    diff = np.abs(soft_r - soft_c)
                    report.soft_max_abs = max(report.soft_max_abs, float(diff.max()))
                    report.soft_mean_abs = max(report.soft_mean_abs, float(diff.mean()))
                    assert bin_r is not None and bin_c is not None  # with_binary=True
                    report.min_iou = min(report.min_iou, _iou(bin_r, bin_c))
                    report.runs += 1
    t = tolerance
    if report.non_finite:
        # max() ignores NaN, so the differences alone could look perfect.
        report.failures.append(
            f"non-finite outputs from the {' and '.join(sorted(report.non_finite))}"
        )
    if t.soft_max_abs is not None and not report.soft_max_abs <= t.soft_max_abs:
        report.failures.append(f"soft max |diff| {report.soft_max_abs:.3g} > {t.soft_max_abs:g}")
    if t.soft_mean_abs is not None and not report.soft_mean_abs <= t.soft_mean_abs:
        report.failures.append(f"soft mean |diff| {report.soft_mean_abs:.3g} > {t.soft_mean_abs:g}")
    if t.min_iou is not None and not report.min_iou >= t.min_iou:
        report.failures.append(f"binary IoU {report.min_iou:.6f} < {t.min_iou:g}")
    return report


def check_parity(
    reference: Predictor,
    candidate: Predictor,
    card: ModelCard,
    tolerance: Tolerance,
    images: Sequence[Sequence[np.ndarray]] | None = None,
    what: str = "",
) -> ParityReport:
    """:func:`measure_parity`, raising :class:`ParityError` (with the numbers) on failure."""
    report = measure_parity(reference, candidate, card, tolerance, images)
    if not report.ok:
        raise ParityError(report, what)
    logger.info("%s%s", f"{what}: " if what else "", report.summary())
    return report


# ----------------------------------------------------------------------------- predictors


def torch_predictor(model: Any, device: str = "cpu") -> Predictor:
    """An eval-mode FOCUS ``nn.Module`` as a predictor (imports torch only here)."""
    from models.predict import TorchPredictor

    return TorchPredictor(model, device)


def onnxruntime_predictor(path: str | Path, device: str = "cpu", threads: int = 0) -> Predictor:
    """The service's ONNX Runtime session on ``path`` (full graph optimisation)."""
    from models.runtime.onnxruntime import OnnxRuntimePredictor

    return OnnxRuntimePredictor(
        path, device=device, require_gpu=device == "cuda", intra_op_threads=threads
    )
