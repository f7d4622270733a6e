"""The evaluation loop with a stand-in predictor (no network needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.config import make_card
from training.datasets import pair_folders
from training.evaluate import evaluate_pairs, write_json


def _write(root: Path, name: str, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    y, x = rng.integers(5, h // 2), rng.integers(5, w // 2)
    mask[y : y + h // 3, x : x + w // 3] = True
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, -1)).save(
        root / "images" / f"{name}.png"
    )
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")


class _Oracle:
    """White pixels are foreground: an almost perfect 'network' at 1/4 resolution."""

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _oracle_outputs(image, edges)


def _oracle_outputs(image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assert image.ndim == 4 and edges.shape == image.shape
    fg = (image[0, 0] > 0).astype(np.float32)  # normalised white > 0, black and padding <= 0
    h, w = fg.shape
    low = fg.reshape(h // 4, 4, w // 4, 4).mean((1, 3))
    logits = np.stack([10 * (2 * low - 1), -10 * (2 * low - 1)])[None]  # q0 fg, q1 bg
    probs = np.array([[[0.95, 0.03], [0.03, 0.95]]], np.float32)
    return probs, logits.astype(np.float32)


def test_evaluate_scores_binary_and_soft_masks_and_reports_skips(tmp_path: Path) -> None:
    for i, (h, w) in enumerate([(60, 80), (90, 70), (64, 64)]):
        _write(tmp_path, f"im{i}", h, w, i)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "nomask.png")
    pairs = pair_folders(tmp_path / "images", tmp_path / "masks")
    card = make_card("salient", "tiny")
    res = evaluate_pairs(pairs, _Oracle(), card)
    assert res["dataset"] == "images"
    assert res["skipped"] == [
        {"file": "nomask.png", "reason": "missing mask (expected masks/nomask.png)"}
    ]
    for kind in ("binary", "soft"):
        r = res[kind]
        assert r["images"] == 3
        assert r["MAE"] < 0.05 and r["S"] > 0.93 and r["F1"] > 0.93 and r["BER"] < 5, (kind, r)
    # The soft mask is a probability: background ~ p(q1 is fg) = 0.03, not 0.
    assert res["soft"]["MAE"] > res["binary"]["MAE"]


def test_unreadable_file_at_eval_time_is_skipped_by_name(tmp_path: Path) -> None:
    _write(tmp_path, "good", 64, 64, 0)
    _write(tmp_path, "bad", 64, 64, 1)
    pairs = pair_folders(tmp_path / "images", tmp_path / "masks")
    data = (tmp_path / "images" / "bad.png").read_bytes()
    (tmp_path / "images" / "bad.png").write_bytes(data[: len(data) // 2])  # truncated later
    res = evaluate_pairs(pairs, _Oracle(), make_card("camouflage", "tiny"))
    assert res["binary"]["images"] == 1
    assert [s["file"] for s in res["skipped"]] == ["bad.png"]
    assert res["skipped"][0]["reason"].startswith("unreadable image")


def test_limit_and_json_nan_become_null(tmp_path: Path) -> None:
    _write(tmp_path, "a", 64, 64, 0)
    _write(tmp_path, "b", 64, 64, 1)
    pairs = pair_folders(tmp_path / "images", tmp_path / "masks")
    res = evaluate_pairs(pairs, _Oracle(), make_card("shadow", "tiny"), limit=1)
    assert res["binary"]["images"] == 1
    res["binary"]["AUC"] = float("nan")
    path = write_json({"datasets": [res]}, tmp_path / "out" / "eval.json")
    loaded = json.loads(path.read_text())
    assert loaded["datasets"][0]["binary"]["AUC"] is None
    assert loaded["datasets"][0]["binary"]["MAE"] == pytest.approx(res["binary"]["MAE"])
