"""One error vocabulary for the service: an enum, its status table, and the handlers.

Routes and helpers raise ``ServiceError(ErrorCode.X, message)``; they never build error JSON.
Every error body is ``{"error": {"code": "...", "message": "..."}}`` (DESIGN "HTTP").
Validation errors of FastAPI and Starlette's HTTP exceptions (404 route, 405 method) are
reformatted into the same body by the handlers registered in ``create_app``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ErrorCode(str, Enum):
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    UNKNOWN_TASK = "unknown_task"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INVALID_IMAGE = "invalid_image"
    MALFORMED_BODY = "malformed_body"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_ERROR = "validation_error"
    CLIENT_CLOSED = "client_closed_request"
    BACKEND_ERROR = "backend_error"
    INTERNAL_ERROR = "internal_error"
    QUEUE_FULL = "queue_full"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    REQUEST_TIMEOUT = "request_timeout"
    RELOAD_FAILED = "reload_failed"
    FORBIDDEN = "forbidden"


STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_TASK: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.MALFORMED_BODY: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.CLIENT_CLOSED: 499,  # nginx's convention; the client never sees it
    ErrorCode.BACKEND_ERROR: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.QUEUE_FULL: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.OVERLOADED: 503,  # admission: no permit or no pixel budget left, before the body
    ErrorCode.REQUEST_TIMEOUT: 408,  # headers or body slower than FOCUS_READ_TIMEOUT_S
    ErrorCode.RELOAD_FAILED: 422,  # the repository's new version cannot be served; old one serves
    ErrorCode.FORBIDDEN: 403,  # e.g. the admin API while FOCUS_ADMIN_KEY is unset
}

RETRY_AFTER_S = 1  # sent with every 503: the queue drains within a few batches


class ServiceError(Exception):
    """An expected failure with a code from the table; ``message`` is safe to show clients."""

    def __init__(
        self, code: ErrorCode, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        if STATUS[code] == 503:
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_S))

    @property
    def status(self) -> int:
        return STATUS[self.code]


class ErrorDetail(BaseModel):
    code: ErrorCode = Field(description="Machine-readable error code.")
    message: str = Field(description="Human-readable explanation.")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_response(
    code: ErrorCode, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=STATUS[code], headers=headers)


def error_doc(code: ErrorCode, message: str, description: str | None = None) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry for one error, with an example body."""
    return {
        "model": ErrorBody,
        "description": description or HTTPStatus(STATUS[code]).phrase,
        "content": {
            "application/json": {"example": {"error": {"code": code.value, "message": message}}}
        },
    }


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(ErrorCode.VALIDATION_ERROR, _format_validation(exc))


_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    401: ErrorCode.UNAUTHORIZED,
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:  # a status outside our table (e.g. from a mounted app): keep it, same body
        body = {
            "error": {
                "code": HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_"),
                "message": str(exc.detail),
            }
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(code, message, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ErrorCode.INTERNAL_ERROR, "internal server error")


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
