"""``POST /segment?task=...`` and ``POST /segment/{task}``: one image in, one mask out.

The handler binds the request to the task's active model version (a reload meanwhile does not
move it), takes an admission permit before reading anything (503 ``overloaded`` at once when
the task's in-flight slots or the pixel budget are used up; the image's pixels are reserved as
soon as its header has arrived), reads the body under the size limit, answers from the response
cache where ``FOCUS_CACHE_MB`` enables it, decodes and preprocesses in the thread pool, queues
the inputs in the version's batcher, waits for the outputs (or the deadline:
``FOCUS_TIMEOUT_S``, lowered by ``X-Focus-Timeout-Ms``; or the client going away), and builds
the mask and its encoding in the thread pool again. The deadline is checked before every CPU
stage. The chain itself is ``service.pipeline.segment_bytes`` (shared with ``focus segment``);
this module supplies its batcher, thread pool, deadline checks and cache, and refuses options
not offered for the task (422, ``service.refinement.check_options``) before admission. With
``zoom=auto`` the crop's second pass goes through the same batcher and deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from service.admission import HeaderSniffer, Permit
from service.batcher import Outputs, Ticket
from service.cache import CachedResponse, cache_key
from service.deps import ApiKeyDep, StateDep, TimeoutDep
from service.errors import ErrorCode, ServiceError, error_doc
from service.imaging import Encoding, ImageDecodeError, ImageTooLargeError
from service.pipeline import (
    Inference,
    OutputFormat,
    PreparedImage,
    SegmentOptions,
    json_result,
    network_input,
    segment_bytes,
)
from service.refinement import OptionError, RefineMode, ZoomMode, check_options, response_headers
from service.schemas import RefinementInfo, SegmentResult, Timing
from service.state import LoadedModel, ServiceState
from service.upload import read_image_body

logger = logging.getLogger(__name__)
router = APIRouter(tags=["segmentation"], dependencies=[ApiKeyDep])
T = TypeVar("T")

TaskQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=64,
        description="Task name or alias: salient (sod), camouflage (cod), shadow (sd), "
        "defocus (dbd), forgery (fd). Only tasks with a model are served; see GET /tasks.",
        examples=["camouflage"],
    ),
]
TaskPath = Annotated[
    str, Path(min_length=1, max_length=64, description="Task name or alias.", examples=["cod"])
]
FormatQuery = Annotated[
    OutputFormat,
    Query(
        alias="format",
        description="png: 8-bit grayscale mask (probability x 255) at the original size; "
        "webp: the same mask as lossless WebP (decodes as RGB with R = G = B); "
        "json: the mask as base64 PNG plus statistics; rgba: the image with the mask as alpha; "
        "overlay: the mask tinted over the image.",
        examples=["png", "webp"],
    ),
]
EncodingQuery = Annotated[
    Encoding | None,
    Query(
        description="How png/rgba/overlay images are encoded: png (default), webp (lossless; "
        "rgba keeps its alpha) or jpeg (quality 90, overlay only). format=webp implies webp.",
        examples=["jpeg", "webp"],
    ),
]
RefineQuery = Annotated[
    RefineMode,
    Query(
        description="guided: edge-aware upsampling of the mask (a guided filter on the "
        "full-resolution image, radius scaled to the resize factor). Off by default; offered "
        "only for tasks where it measured better (benchmarks/RESULTS.md), else 422.",
        examples=["guided"],
    ),
]
ZoomQuery = Annotated[
    ZoomMode,
    Query(
        description="auto: when the object is small relative to the image, run a second pass "
        "on a crop around it and blend it in where the first pass is uncertain (the JSON's "
        "refinement.zoom and the X-Focus-Zoom header say whether it ran). Offered only for "
        "tasks where it measured better, else 422.",
        examples=["auto"],
    ),
]
DecontaminateQuery = Annotated[
    bool,
    Query(
        description="format=rgba only: estimate the foreground colour at the soft edge so the "
        "cut-out shows no fringe of the old background on a new one.",
        examples=[True],
    ),
]
ThresholdQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="Binarise the mask: 255 where the probability exceeds it, else 0.",
        examples=[0.5],
    ),
]

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image (PNG, JPEG, WebP, BMP, TIFF or GIF; any mode; EXIF "
        "orientation applied), as the multipart file field `image` or as the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                },
                "encoding": {"image": {"contentType": "image/*"}},
            },
            "image/png": _IMAGE_BODY,
            "image/jpeg": _IMAGE_BODY,
            "image/webp": _IMAGE_BODY,
            "image/bmp": _IMAGE_BODY,
            "image/tiff": _IMAGE_BODY,
            "image/gif": _IMAGE_BODY,
            "application/octet-stream": _IMAGE_BODY,
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SegmentResult,
        "description": "The mask. `image/png` for png, rgba and overlay (`image/webp` or "
        "`image/jpeg` with encoding=webp|jpeg, `image/webp` for format=webp); JSON for "
        "format=json. The Server-Timing header gives the stage durations; X-Focus-Model-Version "
        "the repository version that computed it; X-Focus-Cache hit or miss when "
        "FOCUS_CACHE_MB is set; X-Focus-Network-Size (WxH) and X-Focus-Scale (network / "
        "original) what the network saw. Examples: `?format=webp`, "
        "`?format=rgba&decontaminate=true&encoding=webp`, `?format=overlay&encoding=jpeg`, "
        "`?refine=guided`, `?format=json&zoom=auto`.",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: error_doc(
        ErrorCode.INVALID_IMAGE,
        "cannot decode the PNG image: image file is truncated",
        "Undecodable or truncated image, or a malformed multipart body",
    ),
    401: error_doc(ErrorCode.UNAUTHORIZED, "missing or invalid X-API-Key header"),
    404: error_doc(
        ErrorCode.UNKNOWN_TASK, "unknown task 'foo'; available: camouflage, salient", "Unknown task"
    ),
    413: error_doc(
        ErrorCode.PAYLOAD_TOO_LARGE,
        "request body exceeds the limit of 20971520 bytes",
        "Body over FOCUS_MAX_BODY_BYTES or image over FOCUS_MAX_PIXELS",
    ),
    415: error_doc(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "unsupported content type 'text/plain'; ..."),
    422: error_doc(
        ErrorCode.VALIDATION_ERROR,
        "query.threshold: Input should be less than or equal to 1",
        "Invalid parameter, or an option not offered for this task or format (e.g. "
        "\"encoding=jpeg is not available for format=rgba ...\")",
    ),
    500: error_doc(
        ErrorCode.BACKEND_ERROR,
        "the onnxruntime backend failed on this request's batch (RuntimeError); see the server log",
    ),
    408: error_doc(
        ErrorCode.REQUEST_TIMEOUT,
        "the request body did not arrive within 30s",
        "Headers or body slower than FOCUS_READ_TIMEOUT_S; the connection is closed",
    ),
    503: error_doc(
        ErrorCode.OVERLOADED,
        "the server is busy with 30000000 pixels of images (the budget is 40000000); "
        "this 48000000-pixel image does not fit; retry later",
        "Overloaded (admission), queue full or shutting down; see Retry-After",
    ),
    504: error_doc(
        ErrorCode.TIMEOUT, "no result within 30s", "FOCUS_TIMEOUT_S or X-Focus-Timeout-Ms passed"
    ),
}


async def _wait_for_disconnect(request: Request) -> None:
    """Returns once the client has gone (the body is fully read, so only disconnect remains)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _await_outputs(
    ticket: Ticket, request: Request, deadline: float, timeout: float
) -> Outputs:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        ticket.cancel("deadline")
        raise ServiceError(ErrorCode.TIMEOUT, f"no result within {timeout:g}s")
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        waiters: set[asyncio.Future[Any]] = {ticket.future, watcher}
        done, _ = await asyncio.wait(
            waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        ticket.cancel("cancelled")
        raise
    finally:
        watcher.cancel()
    if ticket.future in done:
        return ticket.future.result()  # or the batch's ServiceError
    if watcher in done:
        ticket.cancel("client_gone")
        raise ServiceError(ErrorCode.CLIENT_CLOSED, "the client closed the connection")
    ticket.cancel("deadline")
    raise ServiceError(ErrorCode.TIMEOUT, f"no result within {timeout:g}s")


def _image_error(exc: ImageDecodeError | ImageTooLargeError) -> ServiceError:
    if isinstance(exc, ImageTooLargeError):
        return ServiceError(ErrorCode.IMAGE_TOO_LARGE, str(exc))
    return ServiceError(ErrorCode.INVALID_IMAGE, str(exc))


def _before(deadline: float, timeout: float, stage: str, task: str, state: ServiceState) -> None:
    """504 when the deadline passed before ``stage`` starts (no CPU spent on a lost cause)."""
    if time.perf_counter() >= deadline:
        state.metrics.dropped.labels(task=task, reason="deadline").inc()
        raise ServiceError(
            ErrorCode.TIMEOUT, f"no result within {timeout:g}s (deadline passed before {stage})"
        )


async def _cpu_stage(
    state: ServiceState,
    deadline: float,
    timeout: float,
    stage: str,
    task: str,
    func: Callable[..., T],
    *args: Any,
) -> T:
    """Run ``func`` in the CPU pool, checking the deadline once it has a slot."""
    def checked() -> T:
        _before(deadline, timeout, stage, task, state)
        return func(*args)

    _before(deadline, timeout, stage, task, state)
    return await state.run_cpu(checked)


async def _read_body(
    request: Request, state: ServiceState, task: str, sniffer: HeaderSniffer
) -> bytes:
    try:
        return await read_image_body(request, state.settings.max_body_bytes, sniffer)
    except ServiceError as exc:
        if exc.code is ErrorCode.CLIENT_CLOSED:  # an ordinary client abort, not a server fault
            state.metrics.dropped.labels(task=task, reason="client_gone").inc()
            logger.info("%s: the client went away during the upload", task)
        raise


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


async def _segment(
    request: Request, state: ServiceState, task: str, timeout: float, options: SegmentOptions
) -> Response:
    """Bind the request to the task's active model version until its response is built."""
    async with state.bind(task) as loaded:
        request.state.focus_task = loaded.task  # the metrics middleware labels by it
        try:  # refused options cost nothing: before admission and the body
            options = check_options(loaded.task, options)
        except OptionError as exc:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, str(exc)) from None
        with state.admission.admit(loaded.task) as permit:  # before the body: 503 at once
            return await _segment_on(request, state, loaded, options, timeout, permit)


def _cache_key(request: Request, loaded: LoadedModel, data: bytes) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "task"]
    card = loaded.backend.card
    return cache_key(loaded.task, loaded.entry.version, card.version, data, params)


def _cached_response(cached: CachedResponse, started: float) -> Response:
    headers = dict(cached.headers)
    headers["X-Focus-Cache"] = "hit"
    headers["Server-Timing"] = f"total;dur={_ms(time.perf_counter() - started)}"
    return Response(cached.content, media_type=cached.media_type, headers=headers)


def _headers(
    timing: Timing, loaded: LoadedModel, image: PreparedImage, info: RefinementInfo
) -> dict[str, str]:
    return {
        "Server-Timing": ", ".join(
            f"{name};dur={value}"
            for name, value in (
                ("preprocess", timing.preprocess_ms),
                ("queue", timing.queue_ms),
                ("compute", timing.compute_ms),
                ("postprocess", timing.postprocess_ms),
                ("total", timing.total_ms),
            )
        ),
        "X-Focus-Task": loaded.task,
        "X-Focus-Backend": loaded.backend.name,
        "X-Focus-Batch-Size": str(timing.batch_size),
        "X-Focus-Model-Version": str(loaded.entry.version),
        **response_headers(network_input(image), info),
    }


async def _segment_on(
    request: Request,
    state: ServiceState,
    loaded: LoadedModel,
    options: SegmentOptions,
    timeout: float,
    permit: Permit,
) -> Response:
    started = time.perf_counter()
    settings = state.settings
    metrics = state.metrics
    task = loaded.task
    deadline = started + timeout
    data = await _read_body(request, state, task, HeaderSniffer(permit, settings.max_pixels))
    key = _cache_key(request, loaded, data) if state.cache is not None else None
    if key is not None and state.cache is not None:
        cached = state.cache.get(key, loaded.task)
        if cached is not None:
            return _cached_response(cached, started)
    stage_metrics = {
        "preprocess": metrics.preprocess_duration,
        "postprocess": metrics.postprocess_duration,
    }

    async def run_cpu(stage: str, func: Callable[..., T], *args: Any) -> T:
        return await _cpu_stage(state, deadline, timeout, stage, task, func, *args)

    passes: list[PreparedImage] = []  # the image, then the zoom pass's crop (zoom=auto)

    async def infer(image: PreparedImage) -> Inference:
        _before(deadline, timeout, "the zoom pass" if passes else "queueing", task, state)
        passes.append(image)
        ticket = loaded.batcher.submit(image.inputs.image, image.inputs.edges, deadline)
        class_probs, mask_logits = await _await_outputs(ticket, request, deadline, timeout)
        return Inference(
            class_probs, mask_logits, ticket.queue_s, ticket.compute_s, ticket.batch_size
        )

    try:
        segmented = await segment_bytes(
            data,
            loaded.backend.card,
            options,
            infer=infer,
            max_pixels=settings.max_pixels,
            run_cpu=run_cpu,
            observe=lambda stage, s: stage_metrics[stage].labels(task=task).observe(s),
            started=started,
        )
    except (ImageDecodeError, ImageTooLargeError) as exc:
        raise _image_error(exc) from None
    image, encoded, timing = segmented.image, segmented.encoded, segmented.timing
    info = segmented.refinement
    backend = loaded.backend
    headers = _headers(timing, loaded, image, info)
    if options.fmt != "json":
        response = Response(encoded.content, media_type=encoded.media_type, headers=headers)
    else:
        body = json_result(loaded.task, image, encoded, options.threshold, backend, timing,
                           repository_version=loaded.entry.version,
                           refinement=info)  # fmt: skip
        response = JSONResponse(body.model_dump(mode="json"), headers=headers)
    if key is not None and state.cache is not None:
        replay = tuple((k, v) for k, v in headers.items() if k != "Server-Timing")
        content = bytes(response.body)
        state.cache.put(key, CachedResponse(content, response.media_type or "", replay))
        response.headers["X-Focus-Cache"] = "miss"
    return response


@router.post(
    "/segment",
    summary="Segment an image (task as a query parameter)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def segment_by_query(
    request: Request,
    state: StateDep,
    timeout: TimeoutDep,
    task: TaskQuery,
    fmt: FormatQuery = "png",
    threshold: ThresholdQuery = None,
    encoding: EncodingQuery = None,
    refine: RefineQuery = "none",
    zoom: ZoomQuery = "off",
    decontaminate: DecontaminateQuery = False,
) -> Response:
    options = SegmentOptions(fmt=fmt, threshold=threshold, refine=refine, zoom=zoom,
                             decontaminate=decontaminate, encoding=encoding)  # fmt: skip
    return await _segment(request, state, task, timeout, options)


@router.post(
    "/segment/{task}",
    summary="Segment an image (task in the path)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def segment_by_path(
    request: Request,
    state: StateDep,
    timeout: TimeoutDep,
    task: TaskPath,
    fmt: FormatQuery = "png",
    threshold: ThresholdQuery = None,
    encoding: EncodingQuery = None,
    refine: RefineQuery = "none",
    zoom: ZoomQuery = "off",
    decontaminate: DecontaminateQuery = False,
) -> Response:
    options = SegmentOptions(fmt=fmt, threshold=threshold, refine=refine, zoom=zoom,
                             decontaminate=decontaminate, encoding=encoding)  # fmt: skip
    return await _segment(request, state, task, timeout, options)
