"""The image -> mask chain without HTTP, shared by the service routes and ``focus segment``.

:func:`segment_bytes` is the one chain: decode + preprocess (``prepare``) -> ``infer`` ->
``compute_mask`` -> ``encode``, with the stage timings. Its callers differ only in how they infer
(the service through its batcher, the CLI straight on the backend) and where the CPU-bound
stages run (the service's thread pool, the CLI's own thread). What the caller asked for travels
in one :class:`SegmentOptions`; a new request option is a field there, read by ``finish``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from models.config import ModelCard
from models.processing import Prepared, postprocess, preprocess_with_card
from service.backends.base import Backend
from service.imaging import (
    MaskStats,
    decode_image,
    encode_mask_png,
    encode_overlay_png,
    encode_rgba_png,
    mask_stats,
    mask_to_uint8,
)
from service.schemas import BoundingBox, ModelInfo, SegmentResult, Timing

logger = logging.getLogger(__name__)

OutputFormat = Literal["png", "json", "rgba", "overlay"]
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


def encode(fmt: str, image: PreparedImage, result: MaskResult, threshold: float | None) -> Encoded:
    mask_u8 = mask_to_uint8(result.soft, threshold)
    if fmt == "png":
        return Encoded(encode_mask_png(mask_u8), "image/png")
    if fmt == "rgba":
        return Encoded(encode_rgba_png(image.rgb, mask_u8), "image/png")
    if fmt == "overlay":
        return Encoded(encode_overlay_png(image.rgb, mask_u8), "image/png")
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
    )


@dataclass(frozen=True)
class SegmentOptions:
    """What the caller asked for (the query parameters of ``POST /segment``, the options of
    ``focus segment``)."""

    fmt: str = "png"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.fmt not in OUTPUT_FORMATS:
            choices = ", ".join(OUTPUT_FORMATS)
            raise ValueError(f"unknown format {self.fmt!r}; use one of {choices}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")


@dataclass(frozen=True)
class Inference:
    """One image's network outputs and what the inference cost."""

    class_probs: np.ndarray  # float32 [2, 2]
    mask_logits: np.ndarray  # float32 [2, Hp/4, Wp/4]
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True)
class Segmented:
    image: PreparedImage
    encoded: Encoded
    timing: Timing


Infer = Callable[[PreparedImage], Awaitable[Inference]]
RunCpu = Callable[..., Awaitable[Any]]  # run_cpu(stage, fn, *args) -> fn(*args)
Observe = Callable[[str, float], None]  # (stage, seconds), as each stage ends

# The CPU-bound stages, as ``run_cpu`` hears them (the service's deadline messages name them).
DECODING = "decoding"
POST_PROCESSING = "post-processing"


async def run_inline(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """A :data:`RunCpu` for callers without a thread pool (the CLI)."""
    return fn(*args)


def finish(image: PreparedImage, inference: Inference, options: SegmentOptions) -> Encoded:
    """Network outputs -> the encoded result ``options`` ask for."""
    fmt, threshold = options.fmt, options.threshold
    result = compute_mask(
        inference.class_probs,
        inference.mask_logits,
        image,
        with_binary=needs_binary(fmt, threshold),
    )
    return encode(fmt, image, result, threshold)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


async def segment_bytes(
    data: bytes,
    card: ModelCard,
    options: SegmentOptions,
    *,
    infer: Infer,
    max_pixels: int,
    run_cpu: RunCpu = run_inline,
    observe: Observe | None = None,
    started: float | None = None,
) -> Segmented:
    """Image file bytes -> :class:`Segmented` (the image, its encoded result, the timings).

    Raises ``ImageDecodeError`` / ``ImageTooLargeError`` for a bad image and whatever ``infer``
    raises. ``started`` (a ``time.perf_counter()``) is where ``total_ms`` counts from, e.g.
    before the request body was read; ``observe`` hears ``preprocess`` and ``postprocess``.
    """
    begin = time.perf_counter()
    started = begin if started is None else started
    image: PreparedImage = await run_cpu(DECODING, prepare, data, card, max_pixels)
    preprocess_s = time.perf_counter() - begin
    if observe is not None:
        observe("preprocess", preprocess_s)
    inference = await infer(image)
    t1 = time.perf_counter()
    encoded: Encoded = await run_cpu(POST_PROCESSING, finish, image, inference, options)
    postprocess_s = time.perf_counter() - t1
    if observe is not None:
        observe("postprocess", postprocess_s)
    timing = Timing(
        preprocess_ms=_ms(preprocess_s),
        queue_ms=_ms(inference.queue_s),
        compute_ms=_ms(inference.compute_s),
        postprocess_ms=_ms(postprocess_s),
        total_ms=_ms(time.perf_counter() - started),
        batch_size=max(inference.batch_size, 1),
    )
    return Segmented(image=image, encoded=encoded, timing=timing)


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
