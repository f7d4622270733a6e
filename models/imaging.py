"""Decoding untrusted image bytes into RGB, and encoding masks as PNG: the torch-free halves of
the chain that the service, ``focus segment`` and the Triton ensemble's Python models share.

Decoding (``decode_image``):

* only PNG, JPEG (incl. MPO), WebP, BMP, TIFF and GIF are tried (Pillow is never asked to
  guess among its other formats);
* the pixel limit is checked on the header size *before* the pixels are decoded, so a
  decompression bomb costs a header read (Pillow's own bomb guard is kept as a second line);
* animated images (GIF, WebP, APNG, multi-page TIFF) use their first frame;
* EXIF orientation is applied; every mode ends as uint8 RGB: palette and grayscale are
  expanded, alpha is dropped (as the reference's ``convert("RGB")``), CMYK converted,
  16/32-bit integer images scaled from 0..65535 and float images from 0..1.
* anything Pillow cannot decode (truncated, wrong magic bytes, empty) is ``ImageDecodeError``.

Encoding works on the soft mask (float32 HxW in [0, 1]) at the original image size. The
service's other response formats (cut-out, overlay, statistics) live in ``service.imaging``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DECODE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode (maps to 400)."""


class ImageTooLargeError(ValueError):
    """The header announces more pixels than allowed (maps to 413)."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # uint8 [H, W, 3]
    format: str  # Pillow's format name of the payload


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.float64)  # 16-bit (or 32-bit) integer grey
        grey = np.clip(arr / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if float(arr.max(initial=0.0)) <= 1.0 else 1.0
        grey = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode != "RGB":
        if mode in ("P", "PA") and "transparency" in img.info:
            img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Untrusted bytes -> uint8 RGB [H, W, 3], EXIF orientation applied."""
    if not data:
        raise ImageDecodeError("empty image payload")
    Image.init()  # registers every plugin (idempotent); `formats=` only looks at registered ones
    formats = [f for f in DECODE_FORMATS if f in Image.OPEN]  # MPO: part of JPEG in Pillow 13
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: our own limit is stricter
            img = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:  # Pillow's guard (> 2 x MAX_IMAGE_PIXELS) came first
        raise ImageTooLargeError(
            f"image is larger than the pixel limit of {max_pixels} (decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "cannot identify the image; supported formats: PNG, JPEG, WebP, BMP, TIFF, GIF"
        ) from None
    except Exception as exc:  # malformed headers raise all sorts of errors inside Pillow
        raise ImageDecodeError(f"cannot read the image header: {exc}") from None
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"image has an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        fmt = img.format or "unknown"
        try:
            img.seek(0)
            img.load()
            oriented = ImageOps.exif_transpose(img)
            rgb = _to_uint8_rgb(oriented if oriented is not None else img)
        except (ImageDecodeError, ImageTooLargeError):
            raise
        except MemoryError:
            raise ImageTooLargeError("image too large to decode") from None
        except Exception as exc:  # truncated data, corrupt chunks, unsupported sub-formats
            raise ImageDecodeError(f"cannot decode the {fmt} image: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise ImageDecodeError(f"decoded image has an unexpected shape {rgb.shape}")
    return DecodedImage(rgb=rgb, format=fmt)


# ---------------------------------------------------------------------------------- encoding


def mask_to_uint8(soft: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Soft mask -> uint8 HxW: probability * 255 rounded, or 0/255 where ``soft > threshold``."""
    if threshold is not None:
        return np.where(soft > threshold, np.uint8(255), np.uint8(0))
    return np.clip(soft * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    # Compression level 1: masks are mostly flat, so it is nearly as small and much faster.
    ok, buf = cv2.imencode(".png", array, (cv2.IMWRITE_PNG_COMPRESSION, 1))
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported dtypes/shapes
        raise RuntimeError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def encode_mask_png(mask_u8: np.ndarray) -> bytes:
    """8-bit grayscale PNG of an HxW uint8 mask."""
    return encode_png(np.ascontiguousarray(mask_u8))
