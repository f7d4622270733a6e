"""The image -> mask chain without HTTP, shared by the service routes and ``focus segment``.

:func:`segment_bytes` is the one chain: decode + preprocess (``prepare``) -> ``infer`` ->
``first_pass`` (``compute_mask``; zoom=auto: plan the crop) -> [``infer`` on the crop] ->
``finish`` (``refine``: zoom blend, guided filter; ``encode``), with the stage timings. Its
callers differ only in how they infer (the service through its batcher, the CLI straight on
the backend) and where the CPU-bound stages run (the service's thread pool, the CLI's own
thread). What the caller asked for travels in one :class:`SegmentOptions`; a new request option
is a field there, read by ``finish``. Video frames (``service.video``) batch their first pass
and then share ``refine_on_backend`` and ``encode``.
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
from service.refinement import ZoomDecision, ZoomPass, plan_zoom_pass, refine_result
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
            precision=backend.precision,
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


@dataclass(frozen=True)
class SegmentOptions:
    """What the caller asked for (the query parameters of ``POST /segment``, the options of
    ``focus segment``). The task-dependent checks (an option not offered for the task, an
    encoding the format has not) are ``service.refinement.check_options``."""

    fmt: str = "png"
    threshold: float | None = None
    refine: str = "none"  # guided: edge-aware upsampling of the mask
    zoom: str = "off"  # auto: a second pass on a crop around a small object
    decontaminate: bool = False  # rgba: estimated foreground colours at the edge
    encoding: str | None = None  # png, webp, jpeg; None: the format's default

    def __post_init__(self) -> None:
        if self.fmt not in OUTPUT_FORMATS:
            choices = ", ".join(OUTPUT_FORMATS)
            raise ValueError(f"unknown format {self.fmt!r}; use one of {choices}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")

    @property
    def changes_mask(self) -> bool:
        """Whether the soft mask differs from the plain resize (then the reference's binary
        mask no longer matches it, and statistics use soft > 0.5)."""
        return self.refine != "none" or self.zoom != "off"


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
    refinement: RefinementInfo


Infer = Callable[[PreparedImage], Awaitable[Inference]]
RunCpu = Callable[..., Awaitable[Any]]  # run_cpu(stage, fn, *args) -> fn(*args)
Observe = Callable[[str, float], None]  # (stage, seconds), as each stage ends

# The CPU-bound stages, as ``run_cpu`` hears them (the service's deadline messages name them).
DECODING = "decoding"
POST_PROCESSING = "post-processing"


async def run_inline(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """A :data:`RunCpu` for callers without a thread pool (the CLI)."""
    return fn(*args)


def first_pass(
    image: PreparedImage, inference: Inference, options: SegmentOptions, card: ModelCard
) -> tuple[MaskResult, ZoomDecision | None]:
    """Network outputs -> the plain mask, and with zoom=auto whether a second pass on a crop
    is needed (``ZoomDecision.crop``: its input)."""
    with_binary = needs_binary(options.fmt, options.threshold) and not options.changes_mask
    result = compute_mask(inference.class_probs, inference.mask_logits, image,
                          with_binary=with_binary)  # fmt: skip
    if options.zoom != "auto":
        return result, None
    return result, plan_zoom_pass(image, result.soft, card)


def zoom_image(image: PreparedImage, zoom: ZoomPass) -> PreparedImage:
    """The zoom pass's crop as an image to infer on, like any other."""
    return PreparedImage(rgb=zoom.rgb, inputs=zoom.inputs, source_format=image.source_format)


def refine(
    image: PreparedImage,
    first: MaskResult,
    options: SegmentOptions,
    zoom: ZoomDecision | None = None,
    zoom_inference: Inference | None = None,
) -> tuple[MaskResult, RefinementInfo]:
    """The first pass's mask with the zoom pass blended in and the guided filter applied."""
    outputs = None
    if zoom_inference is not None:
        outputs = (zoom_inference.class_probs, zoom_inference.mask_logits)
    soft, info = refine_result(image, first.soft, options, zoom, outputs)
    return MaskResult(soft, None if options.changes_mask else first.binary), info


def finish(
    image: PreparedImage,
    first: MaskResult,
    options: SegmentOptions,
    zoom: ZoomDecision | None = None,
    zoom_inference: Inference | None = None,
) -> tuple[Encoded, RefinementInfo]:
    """The first pass's mask -> the refined, encoded result ``options`` ask for."""
    result, info = refine(image, first, options, zoom, zoom_inference)
    encoded = encode(options.fmt, image, result, options.threshold, encoding=options.encoding,
                     decontaminate=options.decontaminate)  # fmt: skip
    return encoded, info


def refine_on_backend(
    backend: Backend, image: PreparedImage, inference: Inference, options: SegmentOptions
) -> tuple[MaskResult, RefinementInfo]:
    """``first_pass`` and ``refine`` with the zoom pass run synchronously on ``backend`` (video
    frames, whose first pass is batched by ``service.video``)."""
    first, zoom = first_pass(image, inference, options, backend.card)
    zoom_inference = None
    if zoom is not None and zoom.crop is not None:
        q = zoom.crop.inputs
        probs, logits = backend.infer(q.image[None], q.edges[None])
        zoom_inference = Inference(probs[0], logits[0])
    return refine(image, first, options, zoom, zoom_inference)


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

    ``infer`` is called once per network pass: on the image, then (zoom=auto, when the object
    is small) on the crop; queue and compute time add up over both. Raises ``ImageDecodeError``
    / ``ImageTooLargeError`` for a bad image and whatever ``infer`` raises. ``started`` (a
    ``time.perf_counter()``) is where ``total_ms`` counts from, e.g. before the request body
    was read; ``observe`` hears ``preprocess`` and ``postprocess``.
    """
    begin = time.perf_counter()
    started = begin if started is None else started
    image: PreparedImage = await run_cpu(DECODING, prepare, data, card, max_pixels)
    preprocess_s = time.perf_counter() - begin
    if observe is not None:
        observe("preprocess", preprocess_s)
    inference = await infer(image)
    t1 = time.perf_counter()
    first, zoom = await run_cpu(POST_PROCESSING, first_pass, image, inference, options, card)
    zoom_inference = None
    if zoom is not None and zoom.crop is not None:
        t_wait = time.perf_counter()
        zoom_inference = await infer(zoom_image(image, zoom.crop))
        t1 += time.perf_counter() - t_wait  # the wait counts as queue/compute, not postprocess
    encoded, info = await run_cpu(
        POST_PROCESSING, finish, image, first, options, zoom, zoom_inference
    )
    postprocess_s = time.perf_counter() - t1
    if observe is not None:
        observe("postprocess", postprocess_s)
    timing = Timing(
        preprocess_ms=_ms(preprocess_s),
        queue_ms=_ms(inference.queue_s + (zoom_inference.queue_s if zoom_inference else 0.0)),
        compute_ms=_ms(
            inference.compute_s + (zoom_inference.compute_s if zoom_inference else 0.0)
        ),
        postprocess_ms=_ms(postprocess_s),
        total_ms=_ms(time.perf_counter() - started),
        batch_size=max(inference.batch_size, 1),
    )
    return Segmented(image=image, encoded=encoded, timing=timing, refinement=info)


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
