"""Image I/O of the service: the accepted request media types and the response encodings.

Decoding untrusted bytes and the mask PNG live in ``models.imaging`` (shared with
``focus segment`` and the Triton ensemble's Python models) and are re-exported here; this
module adds what only the service returns: the cut-out, the overlay and the mask statistics.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np
from PIL import Image

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
    "ENCODINGS",
    "ENCODING_MEDIA_TYPES",
    "Encoding",
    "encode_as",
    "encode_mask_png",
    "encode_overlay",
    "encode_overlay_png",
    "encode_rgba",
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


Encoding = Literal["png", "webp", "jpeg"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)
ENCODING_MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "webp": "image/webp",
    "jpeg": "image/jpeg",
}
JPEG_QUALITY = 90  # overlays only: a visual check, where JPEG's loss does not matter


def encode_as(array: np.ndarray, encoding: str) -> bytes:
    """uint8 HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) -> bytes in ``encoding``.

    PNG keeps the mode (grey stays 8-bit grey). WebP is lossless and ``exact`` (colours under
    alpha 0 are kept too), and has no grey mode: a grey mask decodes as RGB with R = G = B.
    JPEG (quality 90) has no alpha and is lossy; the route only offers it for overlays.
    """
    if encoding == "png":
        if array.ndim == 3:
            order = [2, 1, 0, 3][: array.shape[2]]  # RGB(A) -> OpenCV's BGR(A)
            array = array[:, :, order]
        return encode_png(np.ascontiguousarray(array))
    if encoding == "webp":
        buf = io.BytesIO()
        # method 0: the fastest lossless effort; masks are flat, so the size cost is small.
        Image.fromarray(np.ascontiguousarray(array)).save(
            buf, "WEBP", lossless=True, exact=True, method=0
        )
        return buf.getvalue()
    if encoding == "jpeg":
        if array.ndim == 3 and array.shape[2] == 4:
            raise ValueError("JPEG has no alpha channel")
        bgr = array[:, :, ::-1] if array.ndim == 3 else array
        ok, out = cv2.imencode(
            ".jpg", np.ascontiguousarray(bgr), (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY)
        )
        if not ok:  # pragma: no cover - OpenCV only fails on unsupported dtypes/shapes
            raise RuntimeError(f"JPEG encoding failed for an array of shape {array.shape}")
        return out.tobytes()
    raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def encode_rgba(rgb: np.ndarray, mask_u8: np.ndarray, encoding: str = "png") -> bytes:
    """Cut-out: ``rgb`` (the image, or its decontaminated foreground colours) with the mask
    as its alpha channel."""
    return encode_as(np.dstack((rgb, mask_u8)), encoding)


def overlay(rgb: np.ndarray, mask_u8: np.ndarray) -> np.ndarray:
    """The mask blended over the image in a bright colour (uint8 RGB)."""
    weight = (mask_u8.astype(np.float32) * (OVERLAY_ALPHA / 255.0))[:, :, None]
    colour = np.asarray(OVERLAY_COLOUR, np.float32)[None, None, :]
    out = rgb.astype(np.float32) * (1.0 - weight) + colour * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def encode_overlay(rgb: np.ndarray, mask_u8: np.ndarray, encoding: str = "png") -> bytes:
    """Visual check: ``overlay`` in ``encoding`` (PNG, WebP or JPEG)."""
    return encode_as(overlay(rgb, mask_u8), encoding)


def encode_rgba_png(rgb: np.ndarray, mask_u8: np.ndarray) -> bytes:
    """Cut-out: the original image with the mask as its alpha channel (RGBA PNG)."""
    return encode_rgba(rgb, mask_u8, "png")


def encode_overlay_png(rgb: np.ndarray, mask_u8: np.ndarray) -> bytes:
    """Visual check: the mask blended over the image in a bright colour (RGB PNG)."""
    return encode_overlay(rgb, mask_u8, "png")


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
