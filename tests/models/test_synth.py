"""Synthetic data: determinism, mask/image consistency and the cue each task is about."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from models.synth import iter_samples, sample, write_dataset
from models.tasks import TASKS
from training.datasets import load_mask, pair_folders

SIZE = 96  # small images keep the suite fast; the generators are size-agnostic


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)) > 0
    return grown & ~mask


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("task", list(TASKS))
def test_sample_is_deterministic_and_independent_of_n(task: str) -> None:
    a_img, a_mask = sample(task, 3, seed=5, size=SIZE)
    b_img, b_mask = sample(task, 3, seed=5, size=SIZE)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = list(iter_samples(task, 4, seed=5, size=SIZE))[3]
    np.testing.assert_array_equal(a_img, c_img)
    d_img, _ = sample(task, 3, seed=6, size=SIZE)
    assert d_img.shape != a_img.shape or not np.array_equal(d_img, a_img)


@pytest.mark.parametrize("task", list(TASKS))
def test_sample_shapes_and_mask_are_consistent(task: str) -> None:
    for i in range(4):
        image, mask = sample(task, i, seed=0, size=SIZE)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == bool and mask.shape == image.shape[:2]
        assert min(image.shape[:2]) == SIZE and max(image.shape[:2]) <= round(SIZE * 1.4)
        frac = mask.mean()
        assert 0.01 < frac < 0.8, f"{task} sample {i}: foreground fraction {frac:.3f}"
        assert image.std() > 5, "the scene must not be flat"


def test_aliases_give_the_same_samples() -> None:
    a, _ = sample("cod", 1, size=SIZE)
    b, _ = sample("camouflage", 1, size=SIZE)
    np.testing.assert_array_equal(a, b)


def _samples(task: str, n: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    return [sample(task, i, seed=1, size=SIZE) for i in range(n)]


def test_salient_objects_contrast_with_background() -> None:
    gaps = []
    for image, mask in _samples("salient"):
        inside = image[mask].astype(np.float64).mean(0)
        ring = image[_ring(mask, 4)].astype(np.float64).mean(0)
        gaps.append(np.abs(inside - ring).max())
    assert np.median(gaps) > 60


def test_camouflage_shares_background_statistics_but_is_not_identical() -> None:
    mean_gaps, std_ratios, salient_gaps = [], [], []
    for image, mask in _samples("camouflage"):
        inside, ring = image[mask].astype(np.float64), image[_ring(mask, 6)].astype(np.float64)
        mean_gaps.append(np.abs(inside.mean(0) - ring.mean(0)).max())
        std_ratios.append(inside.std() / max(ring.std(), 1e-6))
        assert not np.allclose(inside.mean(0), ring.mean(0), atol=0.5)
    for image, mask in _samples("salient"):
        inside, ring = image[mask].astype(np.float64), image[_ring(mask, 6)].astype(np.float64)
        salient_gaps.append(np.abs(inside.mean(0) - ring.mean(0)).max())
    assert np.median(mean_gaps) < 35 and np.median(mean_gaps) < np.median(salient_gaps) / 2
    assert 0.4 < np.median(std_ratios) < 2.5


def test_shadow_darkens_with_soft_edges() -> None:
    ratios, soft_edges = [], []
    for image, mask in _samples("shadow"):
        luma = _luma(image)
        inner = cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        if inner.sum() < 20:
            continue
        ratios.append(luma[inner].mean() / luma[_ring(mask, 6) & ~_ring(mask, 2)].mean())
        # Penumbra: pixels just inside the boundary are darkened less than the umbra.
        edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        soft_edges.append(luma[edge].mean() > luma[inner].mean())
    assert ratios and np.median(ratios) < 0.8
    assert np.mean(soft_edges) > 0.7


def test_defocus_marks_the_sharp_region() -> None:
    wins = 0
    samples = _samples("defocus")
    for image, mask in samples:
        lap = np.abs(cv2.Laplacian(_luma(image), cv2.CV_64F))
        inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        outer = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        wins += lap[inner].mean() > 2 * lap[outer].mean()
    assert wins >= len(samples) - 1


def test_forgery_patches_are_colour_matched() -> None:
    gaps = []
    for image, mask in _samples("forgery"):
        inside, ring = image[mask].astype(np.float64), image[_ring(mask, 8)].astype(np.float64)
        gaps.append(np.abs(inside.mean(0) - ring.mean(0)).max())
    assert np.median(gaps) < 45


def test_masks_have_holes_or_thin_parts_sometimes() -> None:
    holes = thin = 0
    for task in TASKS:
        for _, mask in _samples(task, 6):
            n_bg, _ = cv2.connectedComponents((~mask).astype(np.uint8))
            holes += n_bg > 2  # background split into more than one region
            opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 7)))
            thin += (mask & ~opened.astype(bool)).sum() > 0.03 * mask.sum()
    assert holes >= 3 and thin >= 5


def test_write_dataset_pairs_cleanly(tmp_path) -> None:
    out = write_dataset("shadow", 5, tmp_path / "sd", seed=3, size=64)
    pairs = pair_folders(out / "images", out / "masks")
    assert len(pairs) == 5 and not pairs.problems
    meta = json.loads((out / "synth.json").read_text())
    assert meta == {"task": "shadow", "n": 5, "seed": 3, "size": 64, "version": 1}
    image, mask = sample("shadow", 2, seed=3, size=64)
    disk = cv2.cvtColor(cv2.imread(str(out / "images" / "000002.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(disk, image)
    raw = cv2.imread(str(out / "masks" / "000002.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw)) <= {0, 255}
    np.testing.assert_array_equal(load_mask(out / "masks" / "000002.png"), mask)


def test_write_dataset_with_workers_is_identical(tmp_path) -> None:
    a = write_dataset("forgery", 4, tmp_path / "a", seed=1, size=48, workers=1)
    b = write_dataset("forgery", 4, tmp_path / "b", seed=1, size=48, workers=2)
    for sub in ("images", "masks"):
        for f in sorted((a / sub).iterdir()):
            assert f.read_bytes() == (b / sub / f.name).read_bytes()


def test_data_synth_cli(tmp_path, capsys) -> None:
    from training.cli import register

    parser = argparse.ArgumentParser(prog="focus")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cod"
    args = parser.parse_args(
        ["data", "synth", "--task", "cod", "--n", "3", "--out", str(out), "--size", "48"]
    )
    assert args.func(args) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    assert "wrote 3 camouflage pairs" in capsys.readouterr().out
    bad = parser.parse_args(["data", "synth", "--task", "nope", "--n", "1", "--out", str(out)])
    assert bad.func(bad) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
