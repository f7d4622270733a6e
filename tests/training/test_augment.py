"""Training augmentation: the reference recipe, applied identically to image and mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import PRESETS
from training.augment import (
    BG,
    FG,
    IGNORE,
    REFERENCE_SHORT_SIDES,
    AugmentConfig,
    augment,
    color_jitter,
    make_targets,
    nearest_indices,
    to_canvas,
)


def _scene(h: int = 90, w: int = 140) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((h, w), bool)
    mask[20:60, 30:100] = True
    mask[35:45, 50:70] = False  # a hole
    image = np.where(mask[..., None], np.uint8(220), np.uint8(30)).repeat(3, -1)
    image[..., 1] = np.where(mask, 40, 200)  # fg (220, 40, 220), bg (30, 200, 30)
    return np.ascontiguousarray(image), mask


def test_reference_and_tiny_geometry() -> None:
    ref = AugmentConfig.for_short_side(512)
    assert ref == AugmentConfig()
    assert (ref.short_sides, ref.max_size, ref.crop, ref.canvas) == (
        REFERENCE_SHORT_SIDES,
        2048,
        640,
        512,
    )
    tiny = AugmentConfig.for_short_side(PRESETS["tiny"].input_short_side)
    assert (tiny.canvas, tiny.crop, tiny.max_size) == (256, 320, 1024)
    assert tiny.short_sides[0] == 64 and tiny.short_sides[-1] == 256
    assert AugmentConfig.for_short_side(256, hflip=False).hflip is False
    with pytest.raises(ValueError, match="multiple of 32"):
        AugmentConfig(canvas=500)


def test_nearest_matches_torch_nearest() -> None:
    for n_in, n_out in ((90, 128), (140, 199), (512, 153), (7, 3)):
        src = torch.arange(n_in, dtype=torch.float64)[None, None, None]
        ref = F.interpolate(src, size=(1, n_out), mode="nearest")[0, 0, 0].long().numpy()
        np.testing.assert_array_equal(nearest_indices(n_in, n_out), ref)


def test_image_and_mask_get_the_same_geometry() -> None:
    image, mask = _scene()
    cfg = AugmentConfig.for_short_side(256, color_aug=False)
    flips = set()
    for seed in range(12):
        canvas, label = augment(image, mask, cfg, np.random.default_rng(seed))
        assert canvas.shape == (256, 256, 3) and label.shape == (256, 256)
        valid = label != IGNORE
        assert (canvas[~valid] == 128).all()  # image padding value
        # Away from class boundaries (bilinear image vs nearest label differ by up to a
        # source pixel there, as in the reference) the colour says which class the pixel is.
        k = np.ones((7, 7), np.uint8)  # upscaling by up to ~3x widens the blend
        inner = cv2.erode((label == FG).astype(np.uint8), k) > 0
        outer = cv2.erode((label == BG).astype(np.uint8), k) > 0
        fg_colour = (canvas[..., 1] < 60) & (canvas[..., 0] > 200)
        bg_colour = (canvas[..., 1] > 180) & (canvas[..., 0] < 50)
        assert fg_colour[inner].all() and bg_colour[outer].all()
        assert inner.sum() + outer.sum() > 0.6 * valid.sum()
        cols = np.nonzero((label == FG).any(0))[0]
        flips.add(bool(cols.size) and int(cols[0]) > int(canvas.shape[1] - 1 - cols[-1]))
    assert flips == {True, False}  # both flip states occur


def test_colour_jitter_is_global_and_leaves_geometry_alone() -> None:
    image, mask = _scene()
    on, off = AugmentConfig.for_short_side(256), AugmentConfig.for_short_side(256, color_aug=False)
    changed = 0
    for seed in range(10):
        out = color_jitter(image, on, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        for region in (mask, ~mask):  # one colour in -> one colour out (OpenCV's SIMD tails
            spread = out[region].astype(int).max(0) - out[region].astype(int).min(0)
            assert spread.max() <= 2  # may round a level differently)
        changed += not np.array_equal(out, image)
        _, label_on = augment(image, mask, on, np.random.default_rng(seed))
        _, label_off = augment(image, mask, off, np.random.default_rng(seed))
        np.testing.assert_array_equal(label_on, label_off)
    assert changed >= 5


def test_augment_is_deterministic_per_generator() -> None:
    image, mask = _scene()
    cfg = AugmentConfig.for_short_side(256)
    a = augment(image, mask, cfg, np.random.default_rng([1, 2, 3]))
    b = augment(image, mask, cfg, np.random.default_rng([1, 2, 3]))
    c = augment(image, mask, cfg, np.random.default_rng([1, 2, 4]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_canvas_pads_and_truncates_like_the_reference() -> None:
    image = np.arange(300 * 100 * 3, dtype=np.uint32).reshape(300, 100, 3).astype(np.uint8)
    label = np.zeros((300, 100), np.uint8)
    label[250:] = 1
    out_img, out_lab = to_canvas(image, label, 256, 128)
    np.testing.assert_array_equal(out_img[:, :100], image[:256])  # bottom 44 rows lost
    assert (out_img[:, 100:] == 128).all() and (out_lab[:, 100:] == IGNORE).all()
    assert (out_lab[250:256, :100] == 1).all()


def test_long_images_are_cropped_then_truncated() -> None:
    image, mask = _scene(60, 600)  # 1:10 aspect
    cfg = AugmentConfig(short_sides=(512,), color_aug=False, hflip=False)
    _, label = augment(image, mask, cfg, np.random.default_rng(0))
    # 512 x 5120 resized, capped to 2048 long (205 x 2048), cropped to 205 x 640, truncated at 512.
    valid_rows = np.nonzero((label != IGNORE).any(1))[0]
    valid_cols = np.nonzero((label != IGNORE).any(0))[0]
    assert (valid_rows[-1] + 1, valid_cols[-1] + 1) == (205, 512)


def test_make_targets_matches_hand_computed_boxes() -> None:
    label = np.full((8, 10), IGNORE, np.uint8)
    label[:6, :8] = BG
    label[2:4, 3:7] = FG  # x 3..6, y 2..3
    labels, masks, boxes = make_targets(label)
    assert labels.tolist() == [FG, BG]
    assert masks.shape == (2, 8, 10) and masks[0].sum() == 8 and masks[1].sum() == 48 - 8
    assert not (masks[0] | masks[1])[label == IGNORE].any()  # padding in neither mask
    # fg box [3, 2, 7, 4] / (10, 8) as cxcywh; bg box [0, 0, 8, 6] / (10, 8).
    np.testing.assert_allclose(boxes[0], [0.5, 0.375, 0.4, 0.25])
    np.testing.assert_allclose(boxes[1], [0.4, 0.375, 0.8, 0.75])
    only_bg = np.full((4, 4), BG, np.uint8)
    labels, masks, boxes = make_targets(only_bg)
    assert labels.tolist() == [BG] and masks.shape == (1, 4, 4)
    np.testing.assert_allclose(boxes[0], [0.5, 0.5, 1.0, 1.0])
