"""The FastAPI application factory.

``create_app(settings)`` builds an app and nothing else: no model is loaded, no thread started
and no global state touched at import or construction. Its lifespan loads every model of the
repository, warms each backend up, starts the executors and batchers and then marks the service
ready; on shutdown it marks it not ready, drains the queues in parallel, joins the inference
threads and frees the backends. ``focus serve`` runs it under ``service.server.DrainingServer``
(SIGTERM: ready turns 503 first, ``FOCUS_DRAIN_DELAY_S`` before the listener closes).

uvicorn starts listening only after the lifespan start-up, so a failing start-up (e.g.
``FOCUS_REQUIRE_GPU=true`` without CUDA) stops the process before it accepts any request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import register_error_handlers
from service.metrics import Metrics
from service.pull import StartupPuller
from service.routes import admin, demo, health, segment, tasks
from service.routes import metrics as metrics_route
from service.server import STATE_KEY
from service.settings import Settings
from service.state import BackendFactory, ServiceState, default_backend_factory
from service.timeouts import BodyTimeoutMiddleware

API_DESCRIPTION = """
Universal foreground segmentation with FOCUS: salient objects, camouflaged objects, shadows,
defocus blur and forgeries, one model per task.

Send an image to `POST /segment/{task}` (multipart field `image`, or the raw image body) and get
the mask back at the image's original size. Requests are batched dynamically with others of the
same task and input shape. Errors are always `{"error": {"code": ..., "message": ...}}`.
"""


class RequestMetricsMiddleware:
    """Counts /segment requests by task and status, their duration, and those in flight.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``), so the route still sees the client's
    disconnect message. The task label comes from the route (``request.state.focus_task``);
    requests that never resolved a task are labelled ``unknown``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/segment"):
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.inflight.dec()
            task = scope.get("state", {}).get("focus_task", "unknown")
            self.metrics.requests.labels(task=task, code=str(status)).inc()
            self.metrics.request_duration.labels(task=task).observe(time.perf_counter() - started)


def create_app(
    settings: Settings | None = None,
    *,
    backend_factory: BackendFactory = default_backend_factory,
    metrics: Metrics | None = None,
) -> FastAPI:
    """A new app serving ``settings.model_repository`` (``Settings()`` from the environment)."""
    settings = settings if settings is not None else Settings()
    metrics = metrics if metrics is not None else Metrics(deadline_s=settings.timeout_s)
    state = ServiceState(settings, metrics, backend_factory)
    # FOCUS_PULL (service/pull.py); ServiceState.reload, where this build has it, switches a
    # task to its pulled version without a restart.
    puller = StartupPuller(
        settings.pull_sources,
        settings.model_repository,
        require=settings.require_pull,
        reload=getattr(state, "reload", None),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            await puller.before_start()
            await state.start()
            puller.start()
            yield {STATE_KEY: state}  # service/server.py's DrainingServer finds it here
        finally:
            await puller.stop()
            await state.stop()

    # /docs and /redoc with Swagger UI and ReDoc shipped in the fastapi-offline package: they
    # render on air-gapped machines (FastAPI's own pages load them from a CDN).
    app = FastAPIOffline(
        title="focus-serve",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.focus = state
    app.state.focus_pull = puller
    register_error_handlers(app)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.read_timeout_s, metrics=metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    for router in (segment.router, tasks.router, health.router, metrics_route.router, demo.router):
        app.include_router(router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=demo.STATIC_DIR), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:create_app_from_env`` (multi-worker serve)."""
    return create_app(Settings())
