"""The image -> mask chain without HTTP, shared by the service routes and ``focus segment``.

decode + preprocess (``prepare``) -> backend -> ``compute_mask`` -> ``encode``. All of it is
torch-free and CPU-bound; the service runs it in a thread pool, off the event loop.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from models.config import ModelCard
from models.processing import Prepared, postprocess, preprocess_with_card
from models.refine import estimate_foreground, foreground_radius
from service.backends.base import Backend
from service.imaging import (
    ENCODING_MEDIA_TYPES,
    MaskStats,
    decode_image,
    encode_as,
    encode_mask_png,
    encode_overlay,
    encode_rgba,
    mask_stats,
    mask_to_uint8,
)
from service.schemas import (
    BoundingBox,
    ModelInfo,
    NetworkInput,
    RefinementInfo,
    SegmentResult,
    Timing,
)

logger = logging.getLogger(__name__)

OutputFormat = Literal["png", "json", "rgba", "overlay", "webp"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)


@dataclass(frozen=True)
class PreparedImage:
    rgb: np.ndarray  # uint8 [H, W, 3], EXIF orientation applied
    inputs: Prepared  # network inputs + sizes
    source_format: str

    @property
    def shape_key(self) -> tuple[int, int]:
        """The padded (H, W): only images with the same key share a batch."""
        return self.inputs.padded_size


@dataclass(frozen=True)
class MaskResult:
    soft: np.ndarray  # float32 [H, W] in [0, 1], original image size
    binary: np.ndarray | None  # the reference's binary mask, when asked for


@dataclass(frozen=True)
class Encoded:
    content: bytes
    media_type: str
    mask_png: bytes | None = None  # the json format's mask
    stats: MaskStats | None = None


def prepare(data: bytes, card: ModelCard, max_pixels: int) -> PreparedImage:
    decoded = decode_image(data, max_pixels)
    return PreparedImage(
        rgb=decoded.rgb,
        inputs=preprocess_with_card(decoded.rgb, card),
        source_format=decoded.format,
    )


def compute_mask(
    class_probs: np.ndarray, mask_logits: np.ndarray, image: PreparedImage, *, with_binary: bool
) -> MaskResult:
    """One image's outputs ([2,2], [2,Hp/4,Wp/4]) -> masks at the original size."""
    p = image.inputs
    soft, binary = postprocess(
        class_probs,
        mask_logits,
        p.padded_size,
        p.resized_size,
        p.original_size,
        with_binary=with_binary,
    )
    return MaskResult(soft=soft, binary=binary)


def needs_binary(fmt: str, threshold: float | None) -> bool:
    """The reference binary mask is only needed for json statistics without a threshold."""
    return fmt == "json" and threshold is None


def encode(
    fmt: str,
    image: PreparedImage,
    result: MaskResult,
    threshold: float | None,
    *,
    encoding: str | None = None,
    decontaminate: bool = False,
) -> Encoded:
    """The response body of ``fmt``; ``encoding`` (png, webp, jpeg; default png, webp for
    format=webp) was checked by ``service.refinement.check_options``. ``decontaminate``: the
    cut-out carries estimated foreground colours instead of the image's (no halo)."""
    mask_u8 = mask_to_uint8(result.soft, threshold)
    encoding = encoding or ("webp" if fmt == "webp" else "png")
    media_type = ENCODING_MEDIA_TYPES.get(encoding, "application/octet-stream")
    if fmt in ("png", "webp"):
        return Encoded(encode_as(mask_u8, encoding), media_type)
    if fmt == "rgba":
        rgb = image.rgb
        if decontaminate:
            p = image.inputs
            radius = foreground_radius(p.original_size, p.resized_size)
            rgb = estimate_foreground(rgb, mask_u8.astype(np.float32) / 255.0, radius)
        return Encoded(encode_rgba(rgb, mask_u8, encoding), media_type)
    if fmt == "overlay":
        return Encoded(encode_overlay(image.rgb, mask_u8, encoding), media_type)
    if fmt == "json":
        if threshold is not None:
            binary = result.soft > threshold
        elif result.binary is not None:
            binary = result.binary
        else:
            binary = result.soft > 0.5
        png = encode_mask_png(mask_u8)
        return Encoded(b"", "application/json", mask_png=png, stats=mask_stats(result.soft, binary))
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def json_result(
    task: str,
    image: PreparedImage,
    encoded: Encoded,
    threshold: float | None,
    backend: Backend,
    timing: Timing,
    *,
    repository_version: int | None = None,
    refinement: RefinementInfo | None = None,
) -> SegmentResult:
    """The ``format=json`` body (also what ``focus segment --format json`` writes)."""
    if encoded.stats is None or encoded.mask_png is None:
        raise ValueError("json_result needs an encoding made with format 'json'")
    stats = encoded.stats
    height, width = image.rgb.shape[:2]
    bbox = None
    if stats.bbox is not None:
        x, y, w, h = stats.bbox
        bbox = BoundingBox(x=x, y=y, width=w, height=h)
    card = backend.card
    return SegmentResult(
        task=task,
        width=width,
        height=height,
        mask_png_base64=base64.b64encode(encoded.mask_png).decode("ascii"),
        threshold=threshold,
        foreground_fraction=stats.foreground_fraction,
        bbox=bbox,
        mean_confidence=stats.mean_confidence,
        model=ModelInfo(
            task=task,
            preset=card.preset,
            version=card.version,
            backend=backend.name,
            device=backend.device,
            repository_version=repository_version,
        ),
        timing=timing,
        network=network_input(image),
        refinement=refinement or RefinementInfo(),
    )


def network_input(image: PreparedImage) -> NetworkInput:
    """The size the network saw and its ratio to the original (of the long sides, which
    round least)."""
    p = image.inputs
    return NetworkInput(
        width=p.resized_size[1],
        height=p.resized_size[0],
        scale=round(max(p.resized_size) / max(p.original_size), 6),
    )


def limit_library_threads() -> None:
    """One thread inside numpy's BLAS and OpenCV: parallelism comes from concurrent images.

    Pre/post-processing runs one image per worker thread; letting OpenBLAS and OpenCV also
    spread each small call over every core oversubscribes the CPU (measured: the mask upsampling
    of a 320x240 image took 56 ms instead of 1.6 ms under load). Process-wide, so it is called
    at service start-up and by the CLI, never at import.
    """
    import cv2

    cv2.setNumThreads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning("threadpoolctl is not installed; BLAS may oversubscribe the CPU")
        return
    threadpool_limits(limits=1, user_api="blas")
