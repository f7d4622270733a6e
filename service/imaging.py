"""Image I/O of the service: the accepted request media types and the response encodings.

Decoding untrusted bytes and the mask PNG live in ``models.imaging`` (shared with
``focus segment`` and the Triton ensemble's Python models) and are re-exported here; this
module adds what only the service returns: the cut-out, the overlay and the mask statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from models.imaging import (
    DECODE_FORMATS,
    DecodedImage,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    encode_mask_png,
    encode_png,
    mask_to_uint8,
)

__all__ = [
    "DECODE_FORMATS",
    "IMAGE_MEDIA_TYPES",
    "DecodedImage",
    "ImageDecodeError",
    "ImageTooLargeError",
    "MaskStats",
    "decode_image",
    "encode_mask_png",
    "encode_overlay_png",
    "encode_rgba_png",
    "mask_stats",
    "mask_to_uint8",
]

logger = logging.getLogger(__name__)

# Media types accepted as a raw request body (the payload is sniffed, not trusted).
IMAGE_MEDIA_TYPES: tuple[str, ...] = (
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/webp",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "image/gif",
    "application/octet-stream",
)

OVERLAY_COLOUR: tuple[int, int, int] = (255, 32, 96)  # RGB
OVERLAY_ALPHA = 0.55


def encode_rgba_png(rgb: np.ndarray, mask_u8: np.ndarray) -> bytes:
    """Cut-out: the original image with the mask as its alpha channel (RGBA PNG)."""
    bgra = np.dstack((rgb[:, :, ::-1], mask_u8))
    return encode_png(np.ascontiguousarray(bgra))


def encode_overlay_png(rgb: np.ndarray, mask_u8: np.ndarray) -> bytes:
    """Visual check: the mask blended over the image in a bright colour (RGB PNG)."""
    weight = (mask_u8.astype(np.float32) * (OVERLAY_ALPHA / 255.0))[:, :, None]
    colour = np.asarray(OVERLAY_COLOUR, np.float32)[None, None, :]
    out = rgb.astype(np.float32) * (1.0 - weight) + colour * weight
    bgr = np.clip(out + 0.5, 0, 255).astype(np.uint8)[:, :, ::-1]
    return encode_png(np.ascontiguousarray(bgr))


@dataclass(frozen=True)
class MaskStats:
    foreground_fraction: float
    bbox: tuple[int, int, int, int] | None  # (x, y, width, height) of the foreground
    mean_confidence: float


def mask_stats(soft: np.ndarray, binary: np.ndarray) -> MaskStats:
    """Fraction and bounding box of ``binary``; mean of max(p, 1 - p) over the soft mask."""
    fraction = float(binary.mean()) if binary.size else 0.0
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    bbox = None
    if rows.size and cols.size:
        x0, x1 = int(cols[0]), int(cols[-1])
        y0, y1 = int(rows[0]), int(rows[-1])
        bbox = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    confidence = float(np.maximum(soft, 1.0 - soft).mean()) if soft.size else 0.0
    return MaskStats(foreground_fraction=fraction, bbox=bbox, mean_confidence=confidence)
