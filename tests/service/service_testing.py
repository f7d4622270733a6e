"""Helpers shared by the service tests (images, an in-process async client, a live server).

Named uniquely: test directories have no ``__init__.py``, so module basenames must not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
from PIL import Image

from service.backends.base import Backend
from service.state import default_backend_factory

# ------------------------------------------------------------------------------- images


def image_bytes(
    height: int, width: int, seed: int = 0, fmt: str = "PNG", mode: str = "RGB", **save: Any
) -> bytes:
    """A deterministic picture: a bright blob on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    r = max(2.0, 0.25 * min(height, width))
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    rgb = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    rgb[blob] = rng.integers(150, 256, size=3, dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode) if mode != "RGB" else Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and give an in-process async client (real concurrency)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# ----------------------------------------------------------------------- a real server


async def until(predicate: Any, timeout: float = 20.0) -> None:
    """Wait (on the event loop) until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def asgi_scope(path: str, content_type: str, length: int | None = None) -> dict[str, Any]:
    """An HTTP POST scope for calling the ASGI app directly (to drive the body by hand)."""
    headers = [(b"host", b"test"), (b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


PYTHON = sys.executable


# --------------------------------------------------------- backends wrapping the real one


class WrappedBackend(Backend):
    """Delegates to the real backend; subclasses add behaviour around ``infer``."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.device, self.card = inner.name, inner.device, inner.card
        self.artefact, self.max_batch = inner.artefact, inner.max_batch
        self.batches: list[int] = []  # batch size of every call, warm-up included
        self.closed = False

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(int(image.shape[0]))
        return self.inner.infer(image, edges)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class GatedBackend(WrappedBackend):
    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.hold = threading.Event()  # not `gate`: that is the precision gate of a Backend
        self.hold.set()

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(int(image.shape[0]))
        if not self.hold.wait(timeout=60):
            raise RuntimeError("gate never opened")
        return self.inner.infer(image, edges)


class FailingBackend(WrappedBackend):
    FAIL_WIDTH = 512  # padded width of a 240x480 image at short side 256

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[3] == self.FAIL_WIDTH:
            self.batches.append(int(image.shape[0]))
            raise RuntimeError("simulated device failure")
        return super().infer(image, edges)


def factory(kind: type[WrappedBackend], made: dict[str, Any]):
    def make(entry, settings):
        backend = kind(default_backend_factory(entry, settings))
        made[entry.task] = backend
        return backend

    return make
