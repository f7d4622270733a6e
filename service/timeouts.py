"""Read timeouts (``FOCUS_READ_TIMEOUT_S``): headers, then the body, must arrive in time.

uvicorn bounds only the idle time between keep-alive requests; a client that sends its headers
or its body a byte at a time holds a connection (and an upload buffer) for as long as it likes.
Two pieces close that:

* ``HeaderTimeoutProtocol`` (uvicorn's httptools protocol, subclassed): from the moment a
  connection opens, or a new request's first byte arrives, the headers must be complete within
  the timeout; otherwise the server answers 408 with the JSON error body and closes the
  connection. The app never sees such a request.
* ``BodyTimeoutMiddleware`` (ASGI): once the app has the request, every ``receive`` of the body
  must complete before ``headers + timeout``; otherwise it raises 408 ``request_timeout``
  (with ``Connection: close``) into the route, which answers it like any other error and counts
  it in ``focus_dropped_requests_total{reason="read_timeout"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import ErrorCode, ServiceError
from service.metrics import Metrics

logger = logging.getLogger(__name__)


def timeout_body(timeout_s: float, what: str) -> str:
    message = f"the request {what} did not arrive within {timeout_s:g}s"
    return json.dumps({"error": {"code": ErrorCode.REQUEST_TIMEOUT.value, "message": message}})


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on the request line and headers."""

    def __init__(self, *args: Any, read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout_s = read_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.read_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        body = timeout_body(self.read_timeout_s, "headers").encode()
        logger.info("%s: request headers too slow; 408 and closed", _peer(self.client))
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


class BodyTimeoutMiddleware:
    """Fails a body that has not fully arrived ``timeout_s`` after the request reached the app."""

    def __init__(self, app: ASGIApp, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.perf_counter() + self.timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards only the disconnect is awaited: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.perf_counter())
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                task = scope.get("state", {}).get("focus_task", "unknown")
                self.metrics.dropped.labels(task=task, reason="read_timeout").inc()
                logger.info("%s: request body too slow; 408", _peer(scope.get("client")))
                raise ServiceError(
                    ErrorCode.REQUEST_TIMEOUT,
                    f"the request body did not arrive within {self.timeout_s:g}s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
