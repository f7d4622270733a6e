"""Pre- and post-processing shared by training, evaluation, export, the CLI and the service.

Torch-free (numpy, Pillow, OpenCV). It reproduces the reference inference path
(``shared/reference/OFFICIAL_INFERENCE.md``) exactly:

* resize the shortest side with PIL bilinear on the uint8 image, cap the long side;
* normalise with ImageNet statistics (0..255 scale), zero-pad bottom/right to a multiple of 32
  (and each side to at least 64, the smallest input every exported artefact accepts);
* build the edge map from the *normalised, padded* tensor with OpenCV (Gaussian blur, Canny,
  blend), in BGR channel order, exactly as the reference's ``_inject_edges``;
* from the network outputs: bilinear-upsample mask logits to the padded size, crop to the
  resized size, resize to the original size (all before the sigmoid), then combine with the
  class probabilities into the soft foreground mask (the reference's ``sem_seg[0]``) and the
  binary mask its evaluator scores.

The three linear resampling steps of the mask are composed into one matrix per axis (bilinear
resampling and cropping are linear maps), so the full-resolution mask costs two small matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from models.config import PIXEL_MEAN, PIXEL_STD, ModelCard
from models.contract import MIN_INPUT_SIDE

# Matches torch.nn.functional.interpolate(mode="bilinear", align_corners=False) up to float
# rounding; see _bilinear_matrix.

__all__ = [
    "Prepared",
    "resized_size",
    "padded_size",
    "resize_image",
    "normalise_and_pad",
    "edge_map",
    "preprocess",
    "preprocess_with_card",
    "upsample_mask_logits",
    "soft_mask",
    "binary_mask",
    "postprocess",
]


@dataclass(frozen=True)
class Prepared:
    """One image ready for the network, plus the sizes needed to undo the geometry."""

    image: np.ndarray  # float32 [3, Hp, Wp], normalised RGB, zero padding
    edges: np.ndarray  # float32 [3, Hp, Wp], edge map (BGR order, 0..1)
    original_size: tuple[int, int]  # (H, W) of the input image
    resized_size: tuple[int, int]  # (h, w) after the shortest-side resize, before padding

    @property
    def padded_size(self) -> tuple[int, int]:
        return (int(self.image.shape[1]), int(self.image.shape[2]))


def resized_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """The reference ``ResizeShortestEdge`` target size (detectron2 rounding: int(x + 0.5))."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = short_side / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def padded_size(
    height: int, width: int, divisor: int = 32, minimum: int = MIN_INPUT_SIDE
) -> tuple[int, int]:
    """Each side rounded up to ``divisor``, and to at least ``minimum``.

    The minimum (64: two stride-32 cells) is the smallest side every exported artefact accepts
    (``models.contract``); only extreme aspect ratios (a resized side under 33 px, e.g. a
    40000x100 panorama) reach it, and they get more zero padding than the reference's 32, which
    the crop in the post-processing removes again.
    """
    return (
        max(-(-height // divisor) * divisor, minimum),
        max(-(-width // divisor) * divisor, minimum),
    )


def resize_image(rgb: np.ndarray, short_side: int, max_size: int) -> np.ndarray:
    """PIL bilinear resize of a uint8 HxWx3 RGB image (PIL antialiases when downscaling)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    new_h, new_w = resized_size(h, w, short_side, max_size)
    if (new_h, new_w) == (h, w):
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))


def normalise_and_pad(
    rgb: np.ndarray,
    mean: tuple[float, float, float] = PIXEL_MEAN,
    std: tuple[float, float, float] = PIXEL_STD,
    divisor: int = 32,
) -> np.ndarray:
    """uint8 HxWx3 -> float32 [3, Hp, Wp]: (x - mean) / std, zero-padded after normalising."""
    x = rgb.astype(np.float32).transpose(2, 0, 1)
    x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[
        :, None, None
    ]
    h, w = x.shape[1:]
    hp, wp = padded_size(h, w, divisor)
    out = np.zeros((3, hp, wp), np.float32)
    out[:, :h, :w] = x
    return out


def edge_map(x: np.ndarray) -> np.ndarray:
    """The reference edge image from a normalised, padded float32 [3, H, W] tensor.

    Normalised values are mostly outside [0, 1], so the uint8 image is nearly binary; that is
    what the released checkpoints were trained on, so it is reproduced as is.
    """
    u8 = np.clip(x * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(np.ascontiguousarray(u8.transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
    blurred = cv2.GaussianBlur(bgr, (5, 5), 1.4)
    edges = np.stack(
        [cv2.Canny(np.ascontiguousarray(blurred[:, :, c]), 100, 200) for c in range(3)], -1
    )
    combined = cv2.addWeighted(blurred, 0.7, edges, 0.3, 0)
    return (combined / 255.0).transpose(2, 0, 1).astype(np.float32)


def preprocess(
    rgb: np.ndarray,
    short_side: int = 512,
    max_size: int = 2048,
    divisor: int = 32,
    mean: tuple[float, float, float] = PIXEL_MEAN,
    std: tuple[float, float, float] = PIXEL_STD,
) -> Prepared:
    """uint8 HxWx3 RGB image -> network inputs (image, edges) and the sizes to undo it."""
    resized = resize_image(rgb, short_side, max_size)
    image = normalise_and_pad(resized, mean, std, divisor)
    return Prepared(
        image=image,
        edges=edge_map(image),
        original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
        resized_size=(int(resized.shape[0]), int(resized.shape[1])),
    )


def preprocess_with_card(rgb: np.ndarray, card: ModelCard) -> Prepared:
    return preprocess(
        rgb,
        short_side=card.input_short_side,
        max_size=card.input_max_size,
        divisor=card.size_divisibility,
        mean=card.pixel_mean,
        std=card.pixel_std,
    )


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of 1-D bilinear resampling with align_corners=False.

    Reproduces torch's CPU kernel bit for bit in the coordinates: the scale is a float32
    division and the source coordinate ``scale * (dst + 0.5) - 0.5`` is one fused multiply-add
    rounded to float32. Computing it in float64 instead moves the interpolation weights by up to
    ~1e-4 on large downscales, which is visible against the reference's masks.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float64)
    w0 = 1.0 - w1
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), w0)
    np.add.at(m, (rows, i1), w1)
    return m


def _resample_matrix(low: int, padded: int, resized: int, original: int) -> np.ndarray:
    """[original, low]: upsample low->padded, crop to resized, resize to original, composed."""
    up = _bilinear_matrix(low, padded)[:resized]  # [resized, low]
    return (_bilinear_matrix(resized, original) @ up).astype(np.float32)


def upsample_mask_logits(
    mask_logits: np.ndarray,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
) -> np.ndarray:
    """[Q, Hp/4, Wp/4] logits -> [Q, H, W] logits at the original image size."""
    logits = np.asarray(mask_logits, np.float32)
    my = _resample_matrix(logits.shape[1], padded[0], resized[0], original[0])
    mx = _resample_matrix(logits.shape[2], padded[1], resized[1], original[1])
    return np.einsum("hi,qij,wj->qhw", my, logits, mx, optimize=True).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def soft_mask(class_probs: np.ndarray, mask_probs: np.ndarray) -> np.ndarray:
    """Foreground channel of the reference ``sem_seg``: sum_q p(q, fg) * sigmoid(mask_q)."""
    probs = np.asarray(class_probs, np.float32)
    return np.einsum("q,qhw->hw", probs[:, 0], mask_probs).astype(np.float32)


def binary_mask(class_probs: np.ndarray, mask_probs: np.ndarray) -> np.ndarray:
    """The binary mask the reference evaluator scores (instance inference + merge rule).

    Scores are p(query, class) for the Q x K pairs, each times the sigmoid-weighted mean of its
    mask; up to two entries above 0.5 with alternating classes are kept. Two kept: foreground
    where the fg-query mask beats the bg-query mask. Otherwise the best single entry decides.
    The reference walks the pairs in ``topk(sorted=False)`` order, which only matters for exact
    score ties; we walk them in descending score order (stable).
    """
    probs = np.asarray(class_probs, np.float32)
    num_queries, num_classes = probs.shape
    flat_scores = probs.reshape(-1).astype(np.float64)
    labels = np.tile(np.arange(num_classes), num_queries)
    queries = np.repeat(np.arange(num_queries), num_classes)
    flat = mask_probs.reshape(num_queries, -1).astype(np.float64)
    weighted = (flat * flat).sum(1) / (flat.sum(1) + 1e-6)  # per query
    scores = flat_scores * weighted[queries]
    order = np.argsort(-scores, kind="stable")
    picked: list[tuple[int, int]] = []  # (class, query)
    last = -1
    for j in order:
        if len(picked) < 2 and scores[j] > 0.5 and labels[j] != last:
            picked.append((int(labels[j]), int(queries[j])))
            last = int(labels[j])
    if len(picked) == 2:
        fg_q = picked[0][1] if picked[0][0] == 0 else picked[1][1]
        bg_q = picked[1][1] if picked[0][0] == 0 else picked[0][1]
        return mask_probs[fg_q] > mask_probs[bg_q]
    best = int(order[0])
    m = mask_probs[queries[best]]
    return m > 0.5 if labels[best] == 0 else m < 0.5


def postprocess(
    class_probs: np.ndarray,
    mask_logits: np.ndarray,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    with_binary: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image's network outputs -> (soft mask float32 [H, W] in [0, 1], binary bool [H, W])."""
    mask_probs = _sigmoid(upsample_mask_logits(mask_logits, padded, resized, original))
    soft = soft_mask(class_probs, mask_probs)
    return soft, (binary_mask(class_probs, mask_probs) if with_binary else None)
