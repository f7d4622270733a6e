"""Training augmentation of the reference recipe, applied identically to image and mask.

Reference: ``focus/data/dataset_mappers/focus_dataset_mapper.py`` and the configs' ``INPUT``
block (``shared/reference/OFFICIAL_TRAINING.md`` §3). In order:

1. resize the shortest side to a random choice of ``short_sides`` (long side capped), image
   with PIL bilinear, mask with nearest neighbour (torch "nearest" indexing, as detectron2
   resizes the float label map);
2. a uniform random crop of at most ``crop`` x ``crop``;
3. SSD colour jitter (brightness, then contrast/saturation/hue in one of two orders);
4. horizontal flip with p 0.5;
5. the fixed square canvas: pad right/bottom to ``canvas`` (image with 128, label with 255 =
   ignored) and *truncate* what lies beyond it (the reference's ``SIZE_DIVISIBILITY`` used as a
   pad amount; a negative pad crops). Reproduced on purpose: the released weights saw it.

The label map uses the reference's classes: 0 = foreground, 1 = background, 255 = padding.
Everything is numpy/OpenCV/PIL and draws from one ``numpy.random.Generator``, so a sample is a
pure function of (image, mask, generator seed), whichever worker process computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image

from models.processing import resized_size

REFERENCE_SHORT_SIDES: tuple[int, ...] = (
    128, 153, 179, 204, 230, 256, 281, 307, 332, 358, 384, 409, 435, 460, 486, 512,
)
REFERENCE_SHORT_SIDE = 512  # the test-time short side the recipe's sizes are made for

FG, BG, IGNORE = 0, 1, 255


@dataclass(frozen=True)
class AugmentConfig:
    """Sizes and switches of the training augmentation (reference values by default)."""

    short_sides: tuple[int, ...] = REFERENCE_SHORT_SIDES
    max_size: int = 2048
    crop: int = 640
    canvas: int = 512
    pad_value: int = 128
    color_aug: bool = True
    hflip: bool = True
    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __post_init__(self) -> None:
        if self.canvas % 32:
            raise ValueError(f"canvas must be a multiple of 32 (network stride), got {self.canvas}")
        if not self.short_sides or min(self.short_sides) < 1:
            raise ValueError(f"short_sides must be positive, got {self.short_sides}")

    @classmethod
    def for_short_side(cls, short_side: int, **overrides: object) -> AugmentConfig:
        """The reference recipe scaled from its 512 test short side to ``short_side``.

        Short-side choices, crop, long-side cap and canvas all scale by ``short_side / 512``,
        so a preset trained at a smaller input (``tiny``: 256) keeps the recipe's geometry:
        training never exceeds the test scale, and the canvas equals the test short side.
        """
        if short_side == REFERENCE_SHORT_SIDE:
            return replace(cls(), **overrides)  # type: ignore[arg-type]
        r = short_side / REFERENCE_SHORT_SIDE
        sides = tuple(sorted({max(1, int(s * r + 0.5)) for s in REFERENCE_SHORT_SIDES}))
        canvas = int(round(REFERENCE_SHORT_SIDE * r / 32)) * 32
        base = cls(
            short_sides=sides,
            max_size=int(2048 * r + 0.5),
            crop=int(640 * r + 0.5),
            canvas=max(32, canvas),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output index of torch's legacy ``nearest`` (floor(dst * in/out))."""
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_pair(
    image: np.ndarray, label: np.ndarray, short_side: int, max_size: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = label.shape
    nh, nw = resized_size(h, w, short_side, max_size)
    if (nh, nw) == (h, w):
        return image, label
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    label = label[nearest_indices(h, nh)][:, nearest_indices(w, nw)]
    return image, label


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_jitter(rgb: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """SSD photometric distortion on a uint8 RGB image (detectron2 ``ColorAugSSDTransform``).

    Brightness with p 0.5; then, in one of two orders chosen with p 0.5, contrast,
    saturation and hue, each with p 0.5. HSV is OpenCV's uint8 HSV (hue in [0, 180)).
    """
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            return _convert(img, alpha=rng.uniform(*cfg.contrast_range))
        return img

    def saturation(img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*cfg.saturation_range))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    def hue(img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            shift = int(rng.integers(-cfg.hue_delta, cfg.hue_delta + 1))
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    if rng.random() < 0.5:
        bgr = _convert(bgr, beta=rng.uniform(-cfg.brightness_delta, cfg.brightness_delta))
    if rng.random() < 0.5:
        bgr = hue(saturation(contrast(bgr)))
    else:
        bgr = contrast(hue(saturation(bgr)))
    return np.ascontiguousarray(bgr[:, :, ::-1])


def to_canvas(
    image: np.ndarray, label: np.ndarray, canvas: int, pad_value: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad right/bottom to canvas x canvas, truncating anything beyond (reference quirk)."""
    h, w = label.shape
    out_img = np.full((canvas, canvas, 3), pad_value, np.uint8)
    out_lab = np.full((canvas, canvas), IGNORE, np.uint8)
    ch, cw = min(h, canvas), min(w, canvas)
    out_img[:ch, :cw] = image[:ch, :cw]
    out_lab[:ch, :cw] = label[:ch, :cw]
    return out_img, out_lab


def augment(
    image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxWx3 RGB, bool HxW fg mask) -> (uint8 [C, C, 3] canvas, uint8 [C, C] labels).

    Labels: 0 foreground, 1 background, 255 padding (C = ``cfg.canvas``).
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    label = np.where(mask, FG, BG).astype(np.uint8)
    short = int(cfg.short_sides[int(rng.integers(0, len(cfg.short_sides)))])
    image, label = resize_pair(image, label, short, cfg.max_size)
    h, w = label.shape
    ch, cw = min(cfg.crop, h), min(cfg.crop, w)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
    # Colour draws come from their own stream, so geometry does not depend on color_aug.
    color_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    if cfg.color_aug:
        image = color_jitter(np.ascontiguousarray(image), cfg, color_rng)
    if cfg.hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return to_canvas(image, label, cfg.canvas, cfg.pad_value)


def make_targets(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class targets of a label canvas, as the reference's mapper and ``prepare_targets``.

    Returns:
        labels: int64 [N], the classes present (0 fg, 1 bg), padding excluded.
        masks: bool [N, H, W], one mask per present class (padding in neither).
        boxes: float32 [N, 4], tight boxes [x0, y0, x1 + 1, y1 + 1] / (W, H) as (cx, cy, w, h).
    """
    h, w = label.shape
    classes = np.array([c for c in (FG, BG) if (label == c).any()], np.int64)
    masks = np.stack([label == c for c in classes]) if len(classes) else np.zeros((0, h, w), bool)
    boxes = np.zeros((len(classes), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
        boxes[i] = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
    return classes, masks, boxes
