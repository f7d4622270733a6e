"""``focus eval``: score a checkpoint on datasets the way the field reports results.

Each image goes through the shared inference path (``models.processing``: resize, normalise,
pad to 32, edge map; the network; postprocess at the *original* resolution), one image per
batch as in the reference evaluator (a batch pads to its largest member, which changes
results). Two masks are scored against the ground truth (> 128):

* ``binary``: the reference evaluator's merged binary mask, which the published numbers use;
* ``soft``: the served soft foreground probability (``sem_seg[0]``), reported beside it.

The predictor is any :class:`models.contract.Predictor` (``infer(image [1, 3, H, W], edges) ->
(class_probs [1, 2, 2], mask_logits [1, 2, H/4, W/4])`` on numpy arrays), so the same loop
scores PyTorch, ONNX Runtime, OpenVINO or TensorRT; :func:`torch_predictor` wraps a FOCUS
module in ``models.predict.TorchPredictor``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.config import ModelCard
from models.contract import Predictor
from models.processing import postprocess, preprocess_with_card
from training.datasets import PairList, Problem, read_pair
from training.metrics import MaskMetrics

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def torch_predictor(model: torch.nn.Module, device: str = "cpu") -> Predictor:
    """Wrap a FOCUS module (eval mode: ``model(image, edges) -> (class_probs, mask_logits)``)."""
    from models.predict import TorchPredictor

    return TorchPredictor(model, device)


def evaluate_pairs(
    pairs: PairList,
    predict: Predictor,
    card: ModelCard,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score one dataset; returns ``{"dataset", "binary", "soft", "skipped", "seconds"}``."""
    binary_metrics, soft_metrics = MaskMetrics(), MaskMetrics()
    skipped: list[Problem] = list(pairs.problems)
    todo = pairs.pairs if limit is None else pairs.pairs[:limit]
    start = time.perf_counter()
    for pair in todo:
        try:
            image, gt = read_pair(pair)
        except ValueError as exc:
            skipped.append(Problem(pair.name, str(exc).split(": ", 1)[-1]))
            continue
        prep = preprocess_with_card(image, card)
        probs, logits = predict.infer(prep.image[None], prep.edges[None])
        soft, binary = postprocess(
            probs[0], logits[0], prep.padded_size, prep.resized_size, prep.original_size
        )
        assert binary is not None
        binary_metrics.step(binary, gt)
        soft_metrics.step(soft, gt)
        if progress is not None:
            progress(1)
    for p in skipped:
        logger.warning("%s: left out: %s", pairs.name, p)
    return {
        "dataset": pairs.name,
        "binary": binary_metrics.results(),
        "soft": soft_metrics.results(),
        "skipped": [{"file": p.file, "reason": p.reason} for p in skipped],
        "seconds": time.perf_counter() - start,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Write results as JSON (NaN becomes null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2) + "\n", encoding="utf-8")
    return path
