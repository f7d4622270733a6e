"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import COLUMNS, MODEL_ZOO_COLUMNS, MaskMetrics, format_table, roc_auc

# 4x4, ground truth = left half (8 px). Prediction: TP 6, FN 2 (bottom-left), FP 1 (0, 2), TN 7.
GT = np.array([[1, 1, 0, 0]] * 4, bool)
PRED = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.float64)


def _scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    m = MaskMetrics()
    m.step(pred, gt)
    return m.results()


def _f(beta2: float, tp: float, fp: float, fn: float) -> float:
    p, r = tp / (tp + fp), tp / (tp + fn)
    return (1 + beta2) * p * r / (beta2 * p + r)


def _e_measure(fm: np.ndarray, gt: np.ndarray) -> float:
    """Enhanced-alignment measure of a binary map (Fan et al., IJCAI 2018), by its definition."""
    fm, gt = fm.astype(np.float64), gt.astype(np.float64)
    if gt.sum() == 0:
        enhanced = 1 - fm
    elif gt.sum() == gt.size:
        enhanced = fm
    else:
        a, b = fm - fm.mean(), gt - gt.mean()
        xi = 2 * a * b / (a * a + b * b + np.spacing(1))
        enhanced = (1 + xi) ** 2 / 4
    return float(enhanced.sum() / (gt.size - 1))


def test_binary_prediction_hand_computed() -> None:
    r = _scores(PRED, GT)
    assert r["MAE"] == pytest.approx(3 / 16)
    assert r["BER"] == pytest.approx(100 * (1 - 0.5 * (6 / 8 + 7 / 8)))  # 18.75 %
    assert r["BER_reference"] == pytest.approx(0.75 * 18.75)
    assert r["F1"] == pytest.approx(2 * 6 / (2 * 6 + 1 + 2))  # 0.8
    assert r["AUC"] == pytest.approx(1 - 0.1875)  # binary ROC: (1 + TPR - FPR) / 2
    # F-measure (beta^2 0.3): the adaptive threshold 2 * mean = 0.875 keeps the binary map;
    # over the 256 thresholds, 255 give the binary map and ">= 0" gives all ones (P 0.5, R 1).
    f_bin, f_all = _f(0.3, 6, 1, 2), _f(0.3, 8, 8, 0)
    assert r["F_adp"] == pytest.approx(f_bin)
    assert r["F_max"] == pytest.approx(max(f_bin, f_all))
    assert r["F_mean"] == pytest.approx((255 * f_bin + f_all) / 256)
    e_bin, e_all = _e_measure(PRED, GT), _e_measure(np.ones_like(PRED), GT)
    assert r["E_adp"] == pytest.approx(e_bin)
    assert r["E_mean"] == pytest.approx((255 * e_bin + e_all) / 256)
    assert r["E_max"] == pytest.approx(e_bin)
    assert r["images"] == 1 and r["AUC_images"] == 1


def test_perfect_prediction() -> None:
    r = _scores(GT.astype(float), GT)
    assert r["MAE"] == 0 and r["BER"] == 0 and r["F1"] == 1 and r["AUC"] == 1
    for key in ("S", "wF", "F_adp", "F_max"):
        assert r[key] == pytest.approx(1.0), key
    for key in ("E_adp", "E_max"):  # the E-measure divides by N - 1
        assert r[key] == pytest.approx(16 / 15), key


def test_s_measure_special_cases() -> None:
    pred = np.full((4, 4), 0.25)
    assert _scores(pred, np.zeros((4, 4), bool))["S"] == pytest.approx(0.75)  # 1 - mean
    assert _scores(pred, np.ones((4, 4), bool))["S"] == pytest.approx(0.25)  # mean


def test_s_measure_hand_computed() -> None:
    # 5x5, fg = the 3x3 centre (centroid (2, 2): split after row/col 3 in 1-based terms).
    gt = np.zeros((5, 5), bool)
    gt[1:4, 1:4] = True
    pred = np.where(gt, 0.8, 0.1)
    pred[0, 0] = 0.5
    # Object score: fg values all 0.8 (std 0); bg values of 1 - pred: 15 x 0.9 and one 0.5.
    o_fg = 2 * 0.8 / (0.8**2 + 1 + 0)
    bg = 1 - pred[~gt]
    o_bg = 2 * bg.mean() / (bg.mean() ** 2 + 1 + bg.std(ddof=1))
    u = 9 / 25
    s_object = u * o_fg + (1 - u) * o_bg

    def ssim(p: np.ndarray, g: np.ndarray) -> float:
        n = p.size
        x, y = p.mean(), g.mean()
        sx, sy = ((p - x) ** 2).sum() / (n - 1), ((g - y) ** 2).sum() / (n - 1)
        sxy = ((p - x) * (g - y)).sum() / (n - 1)
        alpha, beta = 4 * x * y * sxy, (x * x + y * y) * (sx + sy)
        return alpha / beta if alpha != 0 else (1.0 if beta == 0 else 0.0)

    c = 3  # centroid (2, 2) + 1
    quads = [
        (slice(0, c), slice(0, c)),
        (slice(0, c), slice(c, 5)),
        (slice(c, 5), slice(0, c)),
        (slice(c, 5), slice(c, 5)),
    ]
    weights = [c * c / 25, c * 2 / 25, 2 * c / 25, 4 / 25]
    s_region = sum(
        w * ssim(pred[q], gt[q].astype(float)) for w, q in zip(weights, quads, strict=True)
    )
    expected = 0.5 * s_object + 0.5 * s_region
    assert _scores(pred, gt)["S"] == pytest.approx(expected, rel=1e-9)


def test_soft_prediction_is_not_min_max_stretched() -> None:
    pred = np.where(GT, 0.6, 0.2)
    r = _scores(pred, GT)
    assert r["MAE"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)  # 0.3; stretched would be 0
    assert r["BER"] == 0 and r["F1"] == 1  # > 0.5 is exactly the foreground


def test_soft_auc_ranks_scores() -> None:
    assert _scores(np.where(GT, 0.6, 0.2), GT)["AUC"] == pytest.approx(1.0)
    assert _scores(np.where(GT, 0.2, 0.6), GT)["AUC"] == pytest.approx(0.0)
    assert _scores(np.full((4, 4), 0.4), GT)["AUC"] == pytest.approx(0.5)
    assert roc_auc(np.array([0.5, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.75)


def test_single_class_ground_truth_is_left_out_of_auc_only() -> None:
    m = MaskMetrics()
    m.step(PRED, GT)
    m.step(np.zeros((4, 4)), np.zeros((4, 4), bool))
    r = m.results()
    assert r["images"] == 2 and r["AUC_images"] == 1
    assert r["AUC"] == pytest.approx(0.8125)
    assert r["MAE"] == pytest.approx((3 / 16 + 0) / 2)
    assert r["wF"] == pytest.approx(_scores(PRED, GT)["wF"] / 2)  # empty gt scores wF 0


def test_weighted_f_orders_predictions() -> None:
    worse = PRED.copy()
    worse[1, 3] = 1
    assert _scores(worse, GT)["wF"] < _scores(PRED, GT)["wF"] < 1


def test_empty_results_and_shape_check() -> None:
    r = MaskMetrics().results()
    assert r["images"] == 0 and all(math.isnan(r[c]) for c in COLUMNS)
    with pytest.raises(ValueError, match="differ"):
        MaskMetrics().step(np.zeros((2, 2)), np.zeros((3, 3), bool))


def test_table_lists_every_column() -> None:
    r = _scores(PRED, GT)
    table = format_table([("CAMO", "binary", r)])
    head, _, row, note = table.splitlines()
    assert head.split()[:3] == ["dataset", "mask", "n"] and head.split()[3:] == list(COLUMNS)
    assert row.split()[:3] == ["CAMO", "binary", "1"] and "18.750" in row
    assert "0.75 x BER" in note
    assert set(MODEL_ZOO_COLUMNS.values()) <= set(r)
