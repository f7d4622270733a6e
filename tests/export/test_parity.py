"""export.parity: the comparison every export ends with (no model needed: numpy predictors)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from export.parity import (
    BATCH,
    FP16,
    FP32,
    ParityError,
    check_parity,
    measure_parity,
    parity_images,
    tolerance_for,
)
from models.config import make_card
from models.processing import preprocess_with_card

CARD = make_card("salient", "tiny")
Outputs = tuple[np.ndarray, np.ndarray]


class _Fn:
    """A numpy function as a :class:`models.contract.Predictor`."""

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], Outputs]) -> None:
        self.infer = fn


def _reference_outputs(image: np.ndarray, edges: np.ndarray) -> Outputs:
    """A deterministic stand-in network: per-image outputs from pooled inputs."""
    n, _, h, w = image.shape
    pooled = image.reshape(n, 3, h // 4, 4, w // 4, 4).mean((3, 5))  # [N, 3, H/4, W/4]
    logits = np.stack([pooled[:, 0] * 3 - edges[:, 1, ::4, ::4], -pooled[:, 0] * 3], 1)
    probs = np.tile(np.array([[0.9, 0.05], [0.05, 0.9]], np.float32), (n, 1, 1))
    return probs, logits.astype(np.float32)


_reference = _Fn(_reference_outputs)


def test_parity_images_are_two_aspect_ratios_each_one_padded_shape() -> None:
    groups = parity_images()
    assert len(groups) >= 2 and all(len(g) == BATCH for g in groups)
    orientations = set()
    for group in groups:
        shapes = {preprocess_with_card(img, CARD).padded_size for img in group}
        assert len(shapes) == 1
        h, w = group[0].shape[:2]
        orientations.add(h > w)
        assert all(img.dtype == np.uint8 and img.shape == group[0].shape for img in group)
    assert orientations == {True, False}


def test_identical_predictors_pass_with_zero_difference() -> None:
    report = check_parity(_reference, _reference, CARD, FP32)
    images = sum(len(g) for g in parity_images())
    assert report.ok and report.images == images and report.runs == 2 * images
    assert report.soft_max_abs == 0.0 and report.min_iou == 1.0


def test_small_noise_passes_fp16_but_fails_fp32_with_the_numbers() -> None:
    def noisy(image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = _reference_outputs(image, edges)
        return probs, logits + np.float32(1e-3)

    assert check_parity(_reference, _Fn(noisy), CARD, FP16).ok
    with pytest.raises(ParityError) as info:
        check_parity(_reference, _Fn(noisy), CARD, FP32, what="noisy")
    message = str(info.value)
    assert message.startswith("noisy: parity FAILED: soft max |diff| ")
    assert "> 0.0001" in message and "binary IoU min" in message
    assert info.value.report.soft_max_abs > 1e-4


def test_flipped_masks_fail_the_iou_tolerance() -> None:
    def flipped(image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = _reference_outputs(image, edges)
        return probs, -logits

    report = measure_parity(_reference, _Fn(flipped), CARD, FP16)
    assert not report.ok
    assert any(f.startswith("binary IoU") for f in report.failures)


def test_batch_dependent_candidate_is_caught() -> None:
    """A candidate whose batch-4 result differs from its batch-1 result must fail."""

    def leaky(image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = _reference_outputs(image, edges)
        return probs, logits + np.float32(0.1 * (len(image) > 1))

    with pytest.raises(ParityError):
        check_parity(_reference, _Fn(leaky), CARD, FP32)


def test_non_finite_outputs_fail() -> None:
    def broken(image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = _reference_outputs(image, edges)
        return probs, np.full_like(logits, np.nan)

    report = measure_parity(_reference, _Fn(broken), CARD, FP16)
    assert "non-finite outputs from the candidate" in report.failures


def test_tolerances_are_the_issue_numbers() -> None:
    assert (FP32.soft_max_abs, FP32.soft_mean_abs, FP32.min_iou) == (1e-4, None, None)
    assert (FP16.soft_max_abs, FP16.soft_mean_abs, FP16.min_iou) == (None, 1e-2, 0.99)
    assert tolerance_for("bf16").min_iou == 0.99 and tolerance_for("fp32") is FP32
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        tolerance_for("int8")


def test_groups_of_mixed_padded_shapes_are_refused() -> None:
    rng = np.random.default_rng(0)
    group = [
        rng.integers(0, 255, (300, 400, 3), np.uint8),
        rng.integers(0, 255, (400, 300, 3), np.uint8),
    ]
    with pytest.raises(ValueError, match="must share one padded shape"):
        measure_parity(_reference, _reference, CARD, FP32, [group])
