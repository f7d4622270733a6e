"""``POST /segment?task=...`` and ``POST /segment/{task}``: one image in, one mask out.

The handler reads the body under the size limit, decodes and preprocesses in the thread pool,
queues the inputs in the task's batcher, waits for the outputs (or the deadline, or the client
going away), and builds the mask and its encoding in the thread pool again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from service.batcher import Outputs, Ticket
from service.deps import ApiKeyDep, StateDep
from service.errors import ErrorCode, ServiceError, error_doc
from service.imaging import ImageDecodeError, ImageTooLargeError
from service.pipeline import (
    Inference,
    OutputFormat,
    PreparedImage,
    SegmentOptions,
    json_result,
    segment_bytes,
)
from service.schemas import SegmentResult
from service.state import ServiceState
from service.upload import read_image_body

router = APIRouter(tags=["segmentation"], dependencies=[ApiKeyDep])

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
        "json: the mask as base64 PNG plus statistics; rgba: the image with the mask as alpha; "
        "overlay: the mask tinted over the image.",
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
        "description": "The mask. `image/png` for png, rgba and overlay; JSON for format=json. "
        "The Server-Timing header gives the stage durations.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
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
        ErrorCode.VALIDATION_ERROR, "query.threshold: Input should be less than or equal to 1"
    ),
    500: error_doc(
        ErrorCode.BACKEND_ERROR,
        "the onnxruntime backend failed on this request's batch (RuntimeError); see the server log",
    ),
    503: error_doc(
        ErrorCode.QUEUE_FULL,
        "the camouflage queue is full (64 requests waiting); retry later",
        "Queue full or shutting down; see Retry-After",
    ),
    504: error_doc(ErrorCode.TIMEOUT, "no result within 30s"),
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
        ticket.cancel("cancelled")
        raise ServiceError(ErrorCode.CLIENT_CLOSED, "the client closed the connection")
    ticket.cancel("deadline")
    raise ServiceError(ErrorCode.TIMEOUT, f"no result within {timeout:g}s")


def _image_error(exc: ImageDecodeError | ImageTooLargeError) -> ServiceError:
    if isinstance(exc, ImageTooLargeError):
        return ServiceError(ErrorCode.IMAGE_TOO_LARGE, str(exc))
    return ServiceError(ErrorCode.INVALID_IMAGE, str(exc))


async def _segment(
    request: Request, state: ServiceState, task: str, fmt: str, threshold: float | None
) -> Response:
    started = time.perf_counter()
    settings = state.settings
    loaded = state.model(task)
    request.state.focus_task = loaded.task  # the metrics middleware labels by it
    metrics = state.metrics
    data = await read_image_body(request, settings.max_body_bytes)
    deadline = started + settings.timeout_s
    stage_metrics = {
        "preprocess": metrics.preprocess_duration,
        "postprocess": metrics.postprocess_duration,
    }

    async def infer(image: PreparedImage) -> Inference:
        ticket = loaded.batcher.submit(image.inputs.image, image.inputs.edges, deadline)
        class_probs, mask_logits = await _await_outputs(
            ticket, request, deadline, settings.timeout_s
        )
        return Inference(
            class_probs, mask_logits, ticket.queue_s, ticket.compute_s, ticket.batch_size
        )

    try:
        segmented = await segment_bytes(
            data,
            loaded.backend.card,
            SegmentOptions(fmt=fmt, threshold=threshold),
            infer=infer,
            max_pixels=settings.max_pixels,
            run_cpu=state.run_cpu,
            observe=lambda stage, s: stage_metrics[stage].labels(task=loaded.task).observe(s),
            started=started,
        )
    except (ImageDecodeError, ImageTooLargeError) as exc:
        raise _image_error(exc) from None
    image, encoded, timing = segmented.image, segmented.encoded, segmented.timing
    backend = loaded.backend
    headers = {
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
        "X-Focus-Backend": backend.name,
        "X-Focus-Batch-Size": str(timing.batch_size),
    }
    if fmt != "json":
        return Response(encoded.content, media_type=encoded.media_type, headers=headers)
    body = json_result(loaded.task, image, encoded, threshold, backend, timing)
    return JSONResponse(body.model_dump(mode="json"), headers=headers)


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
    task: TaskQuery,
    fmt: FormatQuery = "png",
    threshold: ThresholdQuery = None,
) -> Response:
    return await _segment(request, state, task, fmt, threshold)


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
    task: TaskPath,
    fmt: FormatQuery = "png",
    threshold: ThresholdQuery = None,
) -> Response:
    return await _segment(request, state, task, fmt, threshold)
