"""Foreground-segmentation metrics as the field reports them, via ``pysodmetrics``.

One :class:`MaskMetrics` accumulates per-image scores and averages them over a dataset (the
reference evaluator averages per-image values too, ``focus/evaluation/evaluation.py``). Every
metric that pysodmetrics implements comes from it: MAE, S-measure (alpha 0.5), E-measure
(mean / adaptive / max over its 256-threshold curve; it divides by H*W - 1, so a perfect
prediction scores H*W / (H*W - 1)), weighted F-measure (beta 1), and through ``FmeasureV2``
handlers the F-measure (beta^2 0.3; max / mean / adaptive), BER, F1 (= DICE) and the TPR/FPR
curve that AUC integrates.

Inputs are a prediction in [0, 1] and a boolean ground truth, passed with ``normalize=False``:
pysodmetrics' default would min-max-stretch every prediction, which leaves a binary mask
unchanged but would rescale a soft mask's probabilities per image.

Conventions (where the reference differs, the difference is named):

* ``BER`` is the true balanced error rate in percent, ``100 * (1 - (TPR + TNR) / 2)`` at
  prediction > 0.5. The reference's model zoo reports ``0.75 x`` this value, because its
  evaluator takes ``np.mean`` over the tuple (pos_err, neg_err, BER, 0); ``BER_reference``
  gives that number for comparison. With an empty ground truth pysodmetrics counts TPR as 0
  (the reference gets NaN).
* ``F1`` is 2TP / (2TP + FP + FN) at prediction > 0.5 (the reference adds 1e-6 to the
  denominator). When prediction and ground truth are both empty it is 0 (the reference's
  ``calc_f1`` means 1 there, but crashes on that case).
* ``AUC`` is the area under the ROC curve through the thresholds of the 256-level curve plus
  (0, 0); for a binary prediction this equals scikit-learn's ``roc_auc_score``, which the
  reference uses, i.e. ``1 - BER / 100``. Undefined when the ground truth has one class only;
  such images are left out of the AUC mean (``AUC_images`` counts the rest).
* The model-zoo columns map as MAE -> MAE, SM -> S, EM -> E_mean, WFM -> wF, BER -> BER_reference,
  F1 -> F1, AUC -> AUC, FM -> F_adp. The reference skips BER, F1 and AUC on PASCAL-S; we do not.
"""

from __future__ import annotations

import numpy as np
import py_sod_metrics as psm

# Printed columns, in order.
COLUMNS: tuple[str, ...] = (
    "MAE", "S", "E_mean", "E_adp", "E_max", "wF", "F_max", "F_mean", "F_adp", "BER", "F1", "AUC",
)
# Reference model-zoo column -> our key.
MODEL_ZOO_COLUMNS: dict[str, str] = {
    "MAE": "MAE", "SM": "S", "EM": "E_mean", "WFM": "wF", "BER": "BER_reference",
    "F1": "F1", "AUC": "AUC", "FM": "F_adp",
}
REFERENCE_BER_FACTOR = 0.75


def roc_auc(tpr: np.ndarray, fpr: np.ndarray) -> float:
    """Trapezoidal area under the ROC points of the descending-threshold curve, plus (0, 0)."""
    x = np.concatenate([[0.0], np.asarray(fpr, np.float64)])
    y = np.concatenate([[0.0], np.asarray(tpr, np.float64)])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


class MaskMetrics:
    """Per-image metrics of predictions against ground truths, averaged over a dataset."""

    def __init__(self) -> None:
        self.mae = psm.MAE()
        self.sm = psm.Smeasure(alpha=0.5)
        self.em = psm.Emeasure()
        self.wfm = psm.WeightedFmeasure(beta=1)
        self.counts = psm.FmeasureV2(
            {
                "fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3),
                "ber": psm.BERHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
                "f1": psm.DICEHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
                "tpr": psm.TPRHandler(with_dynamic=True, with_adaptive=False),
                "fpr": psm.FPRHandler(with_dynamic=True, with_adaptive=False),
            }
        )
        self.aucs: list[float] = []
        self.images = 0

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` float or bool [H, W] in [0, 1], ``gt`` bool [H, W]."""
        pred = np.asarray(pred, np.float64)
        gt = np.asarray(gt, bool)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ")
        pred = np.clip(pred, 0.0, 1.0)
        for metric in (self.mae, self.sm, self.em, self.wfm, self.counts):
            metric.step(pred, gt, normalize=False)
        handlers = self.counts._metric_handlers
        tpr, fpr = handlers["tpr"].dynamic_results[-1], handlers["fpr"].dynamic_results[-1]
        if gt.any() and not gt.all():
            self.aucs.append(roc_auc(tpr, fpr))
        self.images += 1

    def results(self) -> dict[str, float]:
        """Dataset means of every metric (NaN for an empty dataset)."""
        if self.images == 0:
            return {k: float("nan") for k in (*COLUMNS, "BER_reference")} | {
                "images": 0, "AUC_images": 0
            }
        em = self.em.get_results()["em"]
        counts = self.counts.get_results()
        fm = counts["fm"]
        ber = 100.0 * float(counts["ber"]["binary"])
        out = {
            "MAE": float(self.mae.get_results()["mae"]),
            "S": float(self.sm.get_results()["sm"]),
            "E_mean": float(np.mean(em["curve"])),
            "E_adp": float(em["adp"]),
            "E_max": float(np.max(em["curve"])),
            "wF": float(self.wfm.get_results()["wfm"]),
            "F_max": float(np.max(fm["dynamic"])),
            "F_mean": float(np.mean(fm["dynamic"])),
            "F_adp": float(fm["adaptive"]),
            "BER": ber,
            "F1": float(counts["f1"]["binary"]),
            "AUC": float(np.mean(self.aucs)) if self.aucs else float("nan"),
            "BER_reference": REFERENCE_BER_FACTOR * ber,
            "images": self.images,
            "AUC_images": len(self.aucs),
        }
        return out


def format_table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """A fixed-width table: one row per (dataset, mask kind)."""
    head = f"{'dataset':<16} {'mask':<6} {'n':>5} " + " ".join(f"{c:>7}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for dataset, kind, res in rows:
        cells = []
        for c in COLUMNS:
            v = res.get(c, float("nan"))
            cells.append(f"{v:>7.3f}" if c == "BER" else f"{v:>7.4f}")
        n = int(res.get("images", 0))
        lines.append(f"{dataset[:16]:<16} {kind:<6} {n:>5} " + " ".join(cells))
    lines.append(
        "BER in %, true balanced error rate; the reference model zoo reports 0.75 x BER "
        "(BER_reference in the JSON)."
    )
    return "\n".join(lines)
