"""models/refine.py: guided filter, foreground estimation, zoom and tile geometry (torch-free)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.refine import (
    OFFERED,
    ZoomCrop,
    blend_zoom,
    estimate_foreground,
    guided_filter,
    guided_params,
    plan_tiles,
    plan_zoom,
    refine_guided,
    refusal,
    stitch_tiles,
)


def _scene(h: int = 240, w: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Red disc on a blue, slightly noisy background, and its exact mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.3 * h) ** 2
    rgb = np.where(mask[..., None], [220, 30, 40], [30, 60, 200]).astype(np.float32)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def _blurry(mask: np.ndarray, factor: int) -> np.ndarray:
    """The mask as a network at 1/factor resolution gives it: down, then bilinearly up."""
    h, w = mask.shape
    low = cv2.resize(
        mask.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA
    )
    return np.clip(cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)


def test_guided_filter_keeps_size_and_range_and_sharpens_the_edge() -> None:
    rgb, mask = _scene()
    soft = _blurry(mask, 8)
    network = (240 // 8, 320 // 8)
    refined = refine_guided(rgb, soft, network)
    assert refined.shape == soft.shape and refined.dtype == np.float32
    assert float(refined.min()) >= 0.0 and float(refined.max()) <= 1.0
    # The edge snaps to the image's: the soft band (0.1 < p < 0.9), about two network pixels
    # wide after the plain resize, all but vanishes, and no pixel ends on the wrong side.
    def band(p: np.ndarray) -> int:
        return int(((p > 0.1) & (p < 0.9)).sum())

    assert band(refined) < band(soft) / 10, (band(soft), band(refined))
    assert ((refined > 0.5) != mask).sum() <= ((soft > 0.5) != mask).sum()
    assert float(np.abs(refined - mask).mean()) < float(np.abs(soft - mask).mean())


def test_guided_filter_on_random_inputs_stays_in_range() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    soft = rng.random((97, 131), dtype=np.float32)
    for subsample in (1, 3):
        out = guided_filter(rgb, soft, radius=5, eps=1e-4, subsample=subsample)
        assert out.shape == soft.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_refine_guided_leaves_a_mask_the_network_saw_at_full_size_unchanged() -> None:
    rgb, mask = _scene(64, 80)
    soft = mask.astype(np.float32) * 0.9
    assert refine_guided(rgb, soft, (64, 80)) is soft


def test_guided_params_scale_with_the_resize_factor() -> None:
    small = guided_params((512, 512), (128, 128))
    large = guided_params((4096, 4096), (128, 128))
    assert (small.radius, small.subsample) == (12, 2)
    assert (large.radius, large.subsample) == (96, 16)


def test_guided_filter_rejects_mismatched_guide() -> None:
    with pytest.raises(ValueError, match="guide"):
        guided_filter(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.float32), 2, 1e-3)


def test_estimate_foreground_removes_the_background_fringe() -> None:
    rgb, mask = _scene()
    alpha = _blurry(mask, 8)
    # A real soft edge: the image itself is the alpha-blend of red over blue.
    red, blue = np.array([220, 30, 40], np.float32), np.array([30, 60, 200], np.float32)
    image = (alpha[..., None] * red + (1 - alpha[..., None]) * blue).astype(np.uint8)
    fg = estimate_foreground(image, alpha, edge_radius=16)
    assert fg.shape == image.shape and fg.dtype == np.uint8  # in 0..255 by type
    band = (alpha > 0.1) & (alpha < 0.9)
    raw_error = np.abs(image[band].astype(np.float32) - red).mean()
    est_error = np.abs(fg[band].astype(np.float32) - red).mean()
    assert est_error < 0.3 * raw_error, (raw_error, est_error)
    # Confident foreground keeps the image's colours.
    inside = alpha > 0.999
    assert np.abs(fg[inside].astype(int) - image[inside].astype(int)).max() <= 2


def test_plan_zoom_crops_a_small_object_and_skips_a_large_one() -> None:
    soft = np.zeros((1200, 1600), np.float32)
    soft[500:620, 700:820] = 0.95
    soft[10:13, 10:13] = 0.9  # a speck of false positive does not widen the box
    crop = plan_zoom(soft, 128, 512)
    assert crop is not None
    assert crop.y0 <= 500 and crop.y1 >= 620 and crop.x0 <= 700 and crop.x1 >= 820
    assert crop.height < 300 and crop.width < 300
    large = np.zeros((1200, 1600), np.float32)
    large[100:1100, 200:1400] = 0.95
    assert plan_zoom(large, 128, 512) is None
    assert plan_zoom(np.zeros((100, 100), np.float32), 128, 512) is None


def test_blend_zoom_changes_only_uncertain_pixels_inside_the_crop() -> None:
    first = np.zeros((200, 200), np.float32)
    first[80:120, 80:120] = 1.0
    first[78:80, 80:120] = 0.5  # an uncertain band
    crop = ZoomCrop(50, 150, 50, 150)
    crop_soft = np.full((100, 100), 0.25, np.float32)
    out = blend_zoom(first, crop_soft, crop, band=2)
    assert out.shape == first.shape and out.min() >= 0 and out.max() <= 1
    assert np.array_equal(out[:50], first[:50])  # outside the crop: untouched
    assert out[100, 100] == 1.0  # confident inside: untouched
    assert out[79, 100] != first[79, 100]  # uncertain: blended towards the crop's mask


def test_tiles_cover_the_image_and_stitch_back_a_constant() -> None:
    tiles = plan_tiles(300, 500, 128, overlap=0.25)
    covered = np.zeros((300, 500), bool)
    for t in tiles:
        assert t.height == 128 and t.width == 128
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()
    out = stitch_tiles((300, 500), tiles, [np.full((128, 128), 0.7, np.float32)] * len(tiles))
    assert np.allclose(out, 0.7)


def test_refusal_names_the_option_the_task_and_why() -> None:
    assert all(refusal(option, task) is None for option in OFFERED for task in OFFERED[option])
    zoom = refusal("zoom", "forgery")
    assert zoom is not None and zoom.startswith(
        "zoom is not offered for task 'forgery': the zoom pass is for salient and camouflaged "
        "objects; native-resolution tiles, tried for forgery and defocus instead, did not "
        "measure better than one pass (benchmarks/refinement.py, see benchmarks/RESULTS.md)"
    )
    guided = refusal("guided", "forgery")
    assert guided == (
        "guided is not offered for task 'forgery': it did not raise the boundary F-measure "
        "(without lowering the S-measure) over a plain resize for this task with the demo "
        "models (benchmarks/refinement.py, see benchmarks/RESULTS.md); offered for: "
        "defocus, salient, shadow"
    )
