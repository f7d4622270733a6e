"""Dynamic batching under concurrency, and the queue / deadline / backend / disconnect paths.

The model is the real tiny ONNX model. Some tests wrap its backend: ``GatedBackend`` holds
batches at a gate so the queue can be filled deterministically, ``FailingBackend`` raises for
one input shape (the deliberately broken backend of the 500 path).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from service_testing import (
    FailingBackend,
    GatedBackend,
    WrappedBackend,
    asgi_scope,
    factory,
    image_bytes,
    metric_value,
    run,
    running,
    until,
)

from service.app import create_app

PNG = {"content-type": "image/png"}


def _waiting(app) -> int:
    """Tickets queued in camouflage's batcher or assembled into the executor's next batch."""
    batcher = app.state.focus.models["camouflage"].batcher
    return batcher.queued + batcher.executor.assembled


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# ------------------------------------------------------------------------------- batching


def test_batches_form_under_concurrency(make_settings) -> None:
    images = [image_bytes(240, 320, seed=s) for s in range(8)]
    app = create_app(make_settings(max_batch_size=8, max_delay_ms=2000))

    async def scenario():
        async with running(app) as client:
            responses = await asyncio.gather(
                *(client.post("/segment/cod", content=data, headers=PNG) for data in images)
            )
            return responses, (await client.get("/metrics")).text

    responses, metrics = run(scenario())
    assert [r.status_code for r in responses] == [200] * 8
    count = metric_value(metrics, "focus_batch_size_count", task="camouflage")
    total = metric_value(metrics, "focus_batch_size_sum", task="camouflage")
    assert total == 8
    assert total / count > 1  # mean batch size above one
    assert max(int(r.headers["x-focus-batch-size"]) for r in responses) > 1


def test_each_client_gets_its_own_mask_alone_or_in_a_mixed_burst(make_settings) -> None:
    """Pairing and batch independence: byte-identical masks, batch of one vs mixed burst."""
    shapes = [(240, 320)] * 5 + [(300, 200)] * 3 + [(100, 400)] * 2
    images = [image_bytes(h, w, seed=10 + i) for i, (h, w) in enumerate(shapes)]

    async def alone():
        async with running(create_app(make_settings(max_batch_size=1))) as client:
            return [
                (await client.post("/segment/cod", content=data, headers=PNG)).content
                for data in images
            ]

    made: dict[str, Any] = {}
    burst_app = create_app(
        make_settings(max_batch_size=8, max_delay_ms=1500),
        backend_factory=factory(WrappedBackend, made),
    )

    async def burst():
        async with running(burst_app) as client:
            order = list(range(len(images)))[::-1]  # arrival order differs from the reference
            responses = await asyncio.gather(
                *(client.post("/segment/cod", content=images[i], headers=PNG) for i in order)
            )
            return dict(zip(order, responses, strict=True))

    reference = run(alone())
    results = run(burst())
    for i in range(len(images)):
        assert results[i].status_code == 200
        assert results[i].content == reference[i], f"image {i} {shapes[i]} differs in the burst"
    assert max(made["camouflage"].batches[1:]) > 1  # batches did form (index 0: warm-up)
    assert sum(made["camouflage"].batches[1:]) == len(images)


# ------------------------------------------------------------------------ error paths


def test_queue_full_returns_503_with_retry_after(make_settings, png_320x240: bytes) -> None:
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(max_batch_size=1, max_queue=1, max_delay_ms=0),
        backend_factory=factory(GatedBackend, made),
    )

    async def scenario():
        async with running(app) as client:
            backend = made["camouflage"]
            backend.hold.clear()
            first = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            await until(lambda: len(backend.batches) == 2)  # warm-up + the first request
            # the second is assembled into the next batch while the first computes ...
            second = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            await until(lambda: _waiting(app) == 1)
            # ... the third waits in the queue, which is then full
            third = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            await until(lambda: _waiting(app) == 2)
            fourth = await client.post("/segment/cod", content=png_320x240, headers=PNG)
            backend.hold.set()
            done = await asyncio.gather(first, second, third)
            return fourth, done, (await client.get("/metrics")).text

    third, done, metrics = run(scenario())
    assert third.status_code == 503
    assert third.headers["retry-after"] == "1"
    assert third.json() == _error(
        "queue_full", "the camouflage queue is full (1 requests waiting); retry later"
    )
    assert [r.status_code for r in done] == [200, 200, 200]
    assert (
        metric_value(
            metrics, "focus_dropped_requests_total", task="camouflage", reason="queue_full"
        )
        == 1
    )
    assert metric_value(metrics, "focus_requests_total", task="camouflage", code="503") == 1


def test_deadline_exceeded_returns_504_and_service_recovers(make_settings, png_320x240) -> None:
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(max_batch_size=1, timeout_s=1.5, max_delay_ms=0),
        backend_factory=factory(GatedBackend, made),
    )

    async def scenario():
        async with running(app) as client:
            backend = made["camouflage"]
            backend.hold.clear()
            stuck = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            await until(lambda: len(backend.batches) == 2)
            queued = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            timed_out = await asyncio.gather(stuck, queued)
            backend.hold.set()
            await until(lambda: app.state.focus.models["camouflage"].batcher.queued == 0)
            ready = await client.get("/health/ready")
            after = await client.post("/segment/cod", content=png_320x240, headers=PNG)
            return timed_out, ready, after, (await client.get("/metrics")).text

    timed_out, ready, after, metrics = run(scenario())
    for response in timed_out:
        assert response.status_code == 504
        assert response.json() == _error("timeout", "no result within 1.5s")
    assert ready.status_code == 200
    assert after.status_code == 200
    assert (
        metric_value(metrics, "focus_dropped_requests_total", task="camouflage", reason="deadline")
        == 1
    )
    assert metric_value(metrics, "focus_requests_total", task="camouflage", code="504") == 2


def test_backend_failure_fails_only_its_batch(make_settings, png_320x240: bytes) -> None:
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(max_batch_size=4, max_delay_ms=300),
        backend_factory=factory(FailingBackend, made),
    )
    failing = [image_bytes(240, 480, seed=s) for s in range(3)]  # padded 256x512
    fine = [image_bytes(240, 320, seed=s) for s in range(3)]  # padded 256x352

    async def scenario():
        async with running(app) as client:
            responses = await asyncio.gather(
                *(client.post("/segment/cod", content=d, headers=PNG) for d in failing + fine)
            )
            ready = await client.get("/health/ready")
            after = await client.post("/segment/cod", content=png_320x240, headers=PNG)
            return responses, ready, after, (await client.get("/metrics")).text

    responses, ready, after, metrics = run(scenario())
    for response in responses[:3]:
        assert response.status_code == 500
        assert response.json() == _error(
            "backend_error",
            "the onnxruntime backend failed on this request's batch (RuntimeError); "
            "see the server log",
        )
    assert [r.status_code for r in responses[3:]] == [200, 200, 200]
    assert ready.status_code == 200 and after.status_code == 200
    assert metric_value(metrics, "focus_requests_total", task="camouflage", code="500") == 3


def test_disconnected_client_is_dropped_before_compute(make_settings, png_320x240) -> None:
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(max_batch_size=1, max_delay_ms=0),
        backend_factory=factory(GatedBackend, made),
    )

    async def scenario():
        async with running(app) as client:
            backend = made["camouflage"]
            backend.hold.clear()
            first = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            await until(lambda: len(backend.batches) == 2)
            batcher = app.state.focus.models["camouflage"].batcher
            messages = [
                {"type": "http.request", "body": png_320x240, "more_body": False},
            ]
            gone = asyncio.Event()

            async def receive():
                if messages:
                    return messages.pop(0)
                await until(lambda: _waiting(app) == 1)
                gone.set()
                return {"type": "http.disconnect"}  # the client went away while queued

            sent: list[dict] = []

            async def send(message):
                sent.append(message)

            await app(asgi_scope("/segment/cod", "image/png"), receive, send)
            assert gone.is_set()
            backend.hold.set()
            assert (await first).status_code == 200
            await until(lambda: batcher.queued == 0)
            return backend.batches, sent, (await client.get("/metrics")).text

    batches, sent, metrics = run(scenario())
    assert batches == [1, 1]  # warm-up and the first request only: the abandoned one never ran
    assert sent[0]["status"] == 499
    assert (
        metric_value(
            metrics, "focus_dropped_requests_total", task="camouflage", reason="client_gone"
        )
        == 1
    )
    assert metric_value(metrics, "focus_requests_total", task="camouflage", code="499") == 1


def test_graceful_shutdown_drains_the_queue(make_settings, png_320x240: bytes) -> None:
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(max_batch_size=1, max_delay_ms=0),
        backend_factory=factory(GatedBackend, made),
    )

    async def scenario():
        import httpx

        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            backend = made["camouflage"]
            backend.hold.clear()
            pending = [
                asyncio.create_task(client.post("/segment/cod", content=png_320x240, headers=PNG))
                for _ in range(3)
            ]
            await until(lambda: _waiting(app) == 2 and len(backend.batches) == 2)
            shutdown = asyncio.create_task(lifespan.__aexit__(None, None, None))
            await until(lambda: not app.state.focus.ready)
            refused = await client.post("/segment/cod", content=png_320x240, headers=PNG)
            not_ready = await client.get("/health/ready")
            backend.hold.set()
            drained = await asyncio.gather(*pending)
            await shutdown
            return refused, not_ready, drained, backend

    refused, not_ready, drained, backend = run(scenario())
    assert refused.status_code == 503
    assert refused.json() == _error("shutting_down", "the service is shutting down")
    assert not_ready.status_code == 503
    assert [r.status_code for r in drained] == [200, 200, 200]
    assert backend.batches == [1, 1, 1, 1]
    assert backend.closed


def test_preprocessing_and_encoding_run_off_the_event_loop(
    make_settings, png_320x240: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.pipeline as segment_route  # segment_bytes, which the route runs

    threads: dict[str, int] = {}
    real_prepare, real_encode = segment_route.prepare, segment_route.encode

    def prepare(*args, **kwargs):
        threads["prepare"] = threading.get_ident()
        return real_prepare(*args, **kwargs)

    def encode(*args, **kwargs):
        threads["encode"] = threading.get_ident()
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(segment_route, "prepare", prepare)
    monkeypatch.setattr(segment_route, "encode", encode)

    async def scenario():
        async with running(create_app(make_settings())) as client:
            response = await client.post("/segment/cod", content=png_320x240, headers=PNG)
            return response, threading.get_ident()

    response, loop_thread = run(scenario())
    assert response.status_code == 200
    assert threads["prepare"] != loop_thread and threads["encode"] != loop_thread
