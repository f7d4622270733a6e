"""``focus serve``'s uvicorn: the header read timeout and a drain that a load balancer sees.

At SIGTERM uvicorn closes its listening socket at once, so ``/health/ready`` never gets to say
that the process is going away: a Kubernetes endpoint keeps routing to it until connections are
refused. ``DrainingServer`` puts the drain in the order a load balancer needs:

1. SIGTERM: the app is told to drain (``ServiceState.begin_drain``): ``/health/ready`` answers
   503 while the listener stays open and requests are still served, for ``FOCUS_DRAIN_DELAY_S``
   (the time an endpoint controller or a preStop hook needs to stop routing here);
2. then new requests get 503 ``shutting_down`` (``stop_accepting``) and uvicorn's own shutdown
   starts: the listener closes, in-flight requests finish (within ``FOCUS_TIMEOUT_S``);
3. the lifespan shutdown drains every batcher in parallel, joins the executor threads and only
   then closes the backends.

A second SIGTERM or SIGINT skips the delay. The app is found through the lifespan state
(``create_app``'s lifespan yields ``{"focus_state": state}``), so the same server works for a
factory-built app too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from types import FrameType
from typing import Any, Protocol, cast

import uvicorn

from service.settings import Settings
from service.timeouts import HeaderTimeoutProtocol

logger = logging.getLogger(__name__)

STATE_KEY = "focus_state"  # the lifespan state entry holding the app's ServiceState


class Drainable(Protocol):
    def begin_drain(self) -> None: ...
    def stop_accepting(self) -> None: ...


class DrainingServer(uvicorn.Server):
    """uvicorn's server, keeping the listener open for ``drain_delay_s`` after SIGTERM."""

    def __init__(self, config: uvicorn.Config, *, drain_delay_s: float) -> None:
        super().__init__(config)
        self.drain_delay_s = drain_delay_s
        self.drain_started: float | None = None

    def _drainable(self) -> Drainable | None:
        state: dict[str, Any] = getattr(self.lifespan, "state", {}) or {}
        found = state.get(STATE_KEY)
        return found if found is not None and hasattr(found, "begin_drain") else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        target = self._drainable()
        if self.drain_started is not None or target is None or not self.started:
            if target is not None:
                target.stop_accepting()
            super().handle_exit(sig, frame)  # second signal, or nothing to drain yet
            return
        self.drain_started = time.monotonic()
        logger.info(
            "%s: draining; /health/ready is 503, the listener stays open for %.1fs",
            signal.Signals(sig).name,
            self.drain_delay_s,
        )
        target.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if (
            self.drain_started is not None
            and not self.should_exit
            and time.monotonic() - self.drain_started >= self.drain_delay_s
        ):
            target = self._drainable()
            if target is not None:
                target.stop_accepting()
            logger.info("drain delay over: refusing new requests, finishing the admitted ones")
            self.should_exit = True
        return await super().on_tick(counter)


def uvicorn_config(settings: Settings, app: Any, **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``focus serve`` (timeouts from the settings)."""
    # uvicorn calls ``http(config=..., server_state=..., app_state=...)``: a partial works like
    # the class, and pickles for the worker processes of FOCUS_WORKERS > 1.
    protocol = functools.partial(HeaderTimeoutProtocol, read_timeout_s=settings.read_timeout_s)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=cast("type[asyncio.Protocol]", protocol),
        # in-flight requests end within their deadline; the batchers' drain has its own
        timeout_graceful_shutdown=int(settings.timeout_s) + 1,
        **extra,
    )
