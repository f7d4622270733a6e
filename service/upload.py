"""Reading the image out of a request body, with the size limit enforced while streaming.

Accepted bodies: ``multipart/form-data`` with a file field ``image``, or the raw image with an
``image/*`` (or ``application/octet-stream``) content type. A declared Content-Length over the
limit is refused before reading anything; otherwise the body is counted chunk by chunk and
refused (413) as soon as it passes the limit, never after buffering all of it.

The image payload (the raw body, or the ``image`` part of a multipart body) is shown to a
``HeaderSniffer`` as it arrives, so admission reserves the image's pixels from its header
before the rest is read. A client that goes away mid-upload is ``client_closed_request`` (499),
never a server error.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.admission import HeaderSniffer
from service.errors import ErrorCode, ServiceError
from service.imaging import IMAGE_MEDIA_TYPES

FIELD = "image"
MULTIPART = "multipart/form-data"


def _too_large(limit: int) -> ServiceError:
    return ServiceError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"request body exceeds the limit of {limit} bytes"
    )


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        yield chunk


class _SniffingMultiPartParser(MultiPartParser):
    """Starlette's parser, also showing the ``image`` file part's bytes to the sniffer."""

    def __init__(self, sniffer: HeaderSniffer | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sniffer = sniffer

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        super().on_part_data(data, start, end)
        part = self._current_part
        if self.sniffer is not None and part.file is not None and part.field_name == FIELD:
            self.sniffer.feed(data[start:end])


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_image_body(
    request: Request, limit: int, sniffer: HeaderSniffer | None = None
) -> bytes:
    """The image bytes of a /segment request (415 / 413 / 422 / 400 / 499 on a bad body)."""
    try:
        data = await _read_image_body(request, limit, sniffer)
    except ClientDisconnect:
        raise ServiceError(
            ErrorCode.CLIENT_CLOSED, "the client closed the connection during the upload"
        ) from None
    if sniffer is not None:
        sniffer.finish(data)
    return data


async def _read_image_body(request: Request, limit: int, sniffer: HeaderSniffer | None) -> bytes:
    kind = media_type(request)
    is_multipart = kind == MULTIPART
    if not is_multipart and kind not in IMAGE_MEDIA_TYPES:
        shown = kind or "none"
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"unsupported content type {shown!r}; send multipart/form-data with a file field "
            f"'{FIELD}', or the raw image as image/png, image/jpeg, image/webp, image/bmp, "
            "image/tiff or image/gif",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    stream = _limited(request.stream(), limit)
    if not is_multipart:
        chunks = []
        async for chunk in stream:
            if sniffer is not None:
                sniffer.feed(chunk)
            chunks.append(chunk)
        return b"".join(chunks)
    parser = _SniffingMultiPartParser(sniffer, request.headers, stream, max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError(
            ErrorCode.MALFORMED_BODY, f"invalid multipart body: {exc.message}"
        ) from None
    try:
        item = form.get(FIELD)
        if item is None:
            raise ServiceError(
                ErrorCode.VALIDATION_ERROR, f"multipart body has no file field '{FIELD}'"
            )
        if not isinstance(item, UploadFile):
            raise ServiceError(
                ErrorCode.VALIDATION_ERROR,
                f"multipart field '{FIELD}' must be a file (send it with a filename)",
            )
        return await item.read()
    finally:
        await form.close()
