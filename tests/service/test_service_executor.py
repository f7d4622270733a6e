"""The device executor and the batcher's queue accounting (issue 11, items 3 and 5).

The backends are the real tiny ONNX model; ``Recording``/``Gated`` wrappers only watch or hold
``infer`` so that the order and concurrency of batches can be asserted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from service_testing import (
    GatedBackend,
    WrappedBackend,
    factory,
    image_bytes,
    metric_value,
    run,
    until,
)
from service_testing import running as running_app

from models.processing import preprocess_with_card
from service.app import create_app
from service.batcher import Batcher
from service.errors import ServiceError
from service.executor import DeviceExecutor
from service.metrics import Metrics
from service.state import default_backend_factory

PNG = {"content-type": "image/png"}


class Recording(WrappedBackend):
    """Records which task ran, in which thread, and how many infer calls overlapped."""

    log: list[tuple[str, int, int]] = []  # (task, batch size, thread id), shared by the tasks
    lock = threading.Lock()
    active = 0
    max_active = 0

    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.max_active = max(cls.max_active, cls.active)
        try:
            time.sleep(0.02)  # widen the window in which two tasks' batches could overlap
            out = super().infer(image, edges)
        finally:
            with cls.lock:
                cls.active -= 1
        cls.log.append((self.card.task, int(image.shape[0]), threading.get_ident()))
        return out


def test_every_task_shares_one_executor_one_batch_at_a_time(make_settings, model_repository):
    Recording.log, Recording.max_active = [], 0
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(model_repository=model_repository, max_batch_size=2, max_delay_ms=5),
        backend_factory=factory(Recording, made),
    )
    tasks = ("camouflage", "salient", "shadow")
    images = [image_bytes(240, 320, seed=s) for s in range(4)]

    async def scenario():
        async with running_app(app) as client:
            Recording.log.clear()  # forget the warm-ups (run at load time, in a loader thread)
            responses = await asyncio.gather(
                *(
                    client.post(f"/segment/{task}", content=data, headers=PNG)
                    for task in tasks
                    for data in images
                )
            )
            return responses, list(app.state.focus.executors)

    responses, devices = run(scenario())
    assert [r.status_code for r in responses] == [200] * 12
    assert devices == ["cpu"]  # one executor for the one device
    assert {task for task, _, _ in Recording.log} == set(tasks)
    assert sum(n for _, n, _ in Recording.log) == 12
    assert len({thread for _, _, thread in Recording.log}) == 1  # one inference thread
    assert Recording.max_active == 1  # never two batches at once on the device


def test_a_flooded_task_does_not_starve_another(make_settings, model_repository) -> None:
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(model_repository=model_repository, max_batch_size=1, max_delay_ms=0),
        backend_factory=factory(GatedBackend, made),
    )
    order: list[str] = []

    async def scenario():
        async with running_app(app) as client:
            cod = made["camouflage"]
            cod.hold.clear()
            executor = app.state.focus.executors["cpu"]
            batcher = app.state.focus.models["camouflage"].batcher
            flood = [
                asyncio.create_task(client.post("/segment/cod", content=d, headers=PNG))
                for d in (image_bytes(240, 320, seed=s) for s in range(6))
            ]
            await until(lambda: batcher.queued + executor.assembled == 5)  # 1 computing
            late = asyncio.create_task(
                client.post("/segment/salient", content=image_bytes(240, 320), headers=PNG)
            )
            await until(lambda: app.state.focus.models["salient"].batcher.queued == 1)
            for task in flood:
                task.add_done_callback(lambda _: order.append("camouflage"))
            late.add_done_callback(lambda _: order.append("salient"))
            cod.hold.set()
            return await asyncio.gather(*flood, late)

    responses = run(scenario())
    assert [r.status_code for r in responses] == [200] * 7
    # computing(1) + assembled(1) were ahead of it; round-robin runs salient next, not after
    # the four camouflage requests still queued
    assert order.index("salient") <= 3, order


def test_batches_are_stacked_off_the_event_loop(make_settings, monkeypatch) -> None:
    threads: list[int] = []
    real_stack = np.stack

    def stack(*args: Any, **kwargs: Any) -> np.ndarray:
        threads.append(threading.get_ident())
        return real_stack(*args, **kwargs)

    images = [image_bytes(240, 320, seed=s) for s in range(4)]

    async def scenario():
        async with running_app(create_app(make_settings(max_batch_size=4, max_delay_ms=3000))) as c:
            monkeypatch.setattr(np, "stack", stack)
            threads.clear()
            responses = await asyncio.gather(
                *(c.post("/segment/cod", content=d, headers=PNG) for d in images)
            )
            monkeypatch.setattr(np, "stack", real_stack)
            return responses, threading.get_ident()

    responses, loop_thread = run(scenario())
    assert [r.headers["x-focus-batch-size"] for r in responses] == ["4"] * 4
    assert threads, "the batch of 4 was never stacked"
    assert loop_thread not in threads


# ----------------------------------------------------------------- batcher accounting


def _inputs(card, height: int = 240, width: int = 320):
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    prepared = preprocess_with_card(rgb, card)
    return prepared.image, prepared.edges


@pytest.fixture
def tiny_backend(make_settings, single_task_repository):
    from models.repository import scan_repository

    settings = make_settings(model_repository=single_task_repository)
    entry = scan_repository(single_task_repository)["camouflage"]
    backend = GatedBackend(default_backend_factory(entry, settings))
    yield backend
    backend.hold.set()
    backend.close()


async def _batcher(backend, **kwargs: Any) -> tuple[Batcher, DeviceExecutor, Metrics]:
    metrics = Metrics()
    executor = DeviceExecutor("cpu")
    executor.start()
    options = {"max_batch_size": 1, "max_delay_s": 0.0, "max_queue": 2, **kwargs}
    batcher = Batcher("camouflage", backend, metrics=metrics, executor=executor, **options)
    batcher.start()
    return batcher, executor, metrics


async def _computing_and_assembled(batcher: Batcher, executor: DeviceExecutor, backend) -> tuple:
    """Hold ``backend``: one ticket computing inside it, the next one assembled behind it."""
    image, edges = _inputs(backend.card)
    deadline = time.perf_counter() + 60
    backend.hold.clear()
    computing = batcher.submit(image, edges, deadline)
    await until(lambda: len(backend.batches) == 1)
    assembled = batcher.submit(image, edges, deadline)
    await until(lambda: executor.assembled == 1)
    return image, edges, deadline, computing, assembled


def test_cancelled_tickets_do_not_count_toward_queue_full(tiny_backend) -> None:
    async def scenario():
        batcher, executor, metrics = await _batcher(tiny_backend)
        image, edges, deadline, computing, assembled = await _computing_and_assembled(
            batcher, executor, tiny_backend
        )
        gone = [batcher.submit(image, edges, deadline) for _ in range(2)]
        with pytest.raises(ServiceError) as full:
            batcher.submit(image, edges, deadline)
        for ticket in gone:
            ticket.cancel("client_gone")
        await asyncio.sleep(0)  # the futures' done-callbacks run
        queued_after_cancel = batcher.queued
        again = [batcher.submit(image, edges, deadline) for _ in range(2)]  # room again
        tiny_backend.hold.set()
        results = await asyncio.gather(
            computing.future, assembled.future, *(t.future for t in again)
        )
        await batcher.drain()
        await executor.stop(timeout=10)
        text = metrics.exposition()[0].decode()
        return full.value, queued_after_cancel, results, text

    full, queued_after_cancel, results, text = run(scenario())
    assert full.code.value == "queue_full"
    assert queued_after_cancel == 0
    assert len(results) == 4
    dropped = "focus_dropped_requests_total"
    assert metric_value(text, dropped, task="camouflage", reason="client_gone") == 2
    assert metric_value(text, dropped, task="camouflage", reason="queue_full") == 1
    assert tiny_backend.batches == [1, 1, 1, 1]  # the cancelled two never ran


def test_cancelled_tickets_do_not_fill_a_batch(tiny_backend) -> None:
    async def scenario():
        batcher, executor, _ = await _batcher(tiny_backend, max_batch_size=2, max_delay_s=0.5)
        image, edges = _inputs(tiny_backend.card)
        deadline = time.perf_counter() + 60
        first = batcher.submit(image, edges, deadline)
        abandoned = batcher.submit(image, edges, deadline)
        abandoned.cancel("client_gone")  # before the executor looked: the batch is not full
        await asyncio.sleep(0.1)
        third = batcher.submit(image, edges, deadline)
        await asyncio.gather(first.future, third.future)
        await executor.stop(timeout=10)
        return first.batch_size, third.batch_size

    assert run(scenario()) == (2, 2)  # the live two ran together; the abandoned one never did
    assert tiny_backend.batches == [2]


def test_stop_waits_for_the_computing_batch_and_fails_the_assembled_one(tiny_backend) -> None:
    async def scenario():
        batcher, executor, _ = await _batcher(tiny_backend, max_queue=4)
        *_, computing, assembled = await _computing_and_assembled(
            batcher, executor, tiny_backend
        )
        stopping = asyncio.ensure_future(executor.stop(timeout=0.2))
        await asyncio.sleep(0.5)  # past the timeout, the batch is still in infer
        still_waiting = not stopping.done()
        tiny_backend.hold.set()
        await stopping
        return still_waiting, computing.future, assembled.future

    still_waiting, computing, assembled = run(scenario())
    assert still_waiting  # stop never abandons a batch inside infer
    assert computing.result()[0].shape == (2, 2)  # resolved, not left hanging
    with pytest.raises(ServiceError) as refused:
        assembled.result()
    assert refused.value.code.value == "shutting_down"


# ------------------------------------------------------------- threads, buckets, geometry


def test_every_runtime_gets_the_one_thread_setting_and_never_spins(
    make_settings, single_task_repository
) -> None:
    from models.repository import scan_repository
    from service.settings import usable_cores

    settings = make_settings(intra_op_threads=0)
    assert settings.inference_threads == usable_cores()
    entry = scan_repository(single_task_repository)["camouflage"]
    backend = default_backend_factory(entry, settings)
    try:
        options = backend.session.get_session_options()
        assert options.intra_op_num_threads == usable_cores()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    finally:
        backend.close()
    assert make_settings(intra_op_threads=3).inference_threads == 3


@pytest.mark.parametrize("timeout_s", [30.0, 100.0])
def test_duration_buckets_reach_the_deadline(make_settings, timeout_s: float) -> None:
    """A wait that ends in a 504 (just under FOCUS_TIMEOUT_S) still lands in a finite bucket."""
    metrics = create_app(make_settings(timeout_s=timeout_s)).state.focus.metrics
    histograms = {
        "focus_request_duration_seconds": metrics.request_duration.labels(task="camouflage"),
        "focus_queue_duration_seconds": metrics.queue_duration.labels(task="camouflage"),
        "focus_compute_duration_seconds": metrics.compute_duration.labels(
            task="camouflage", backend="onnxruntime"
        ),
        "focus_preprocess_duration_seconds": metrics.preprocess_duration.labels(task="camouflage"),
        "focus_postprocess_duration_seconds": metrics.postprocess_duration.labels(
            task="camouflage"
        ),
    }
    for child in histograms.values():
        child.observe(0.95 * timeout_s)
    text = metrics.exposition()[0].decode()
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name not in histograms:
            continue
        finite = [
            s for s in family.samples
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf" and s.value == 1
        ]  # fmt: skip
        assert finite, f"{family.name}: {0.95 * timeout_s}s only in the +Inf bucket"


def test_an_extreme_aspect_ratio_is_served_at_the_minimum_side(make_settings) -> None:
    """A 20x2000 strip resizes to a side under 32 px; it pads to MIN_INPUT_SIDE, never below."""
    from models.contract import MIN_INPUT_SIDE

    made: dict[str, Any] = {}
    app = create_app(make_settings(), backend_factory=factory(WrappedBackend, made))
    shapes: list[tuple[int, int]] = []
    real_infer = WrappedBackend.infer

    def infer(self, image, edges):
        shapes.append((int(image.shape[2]), int(image.shape[3])))
        return real_infer(self, image, edges)

    async def scenario():
        async with running_app(app) as client:
            return [
                await client.post("/segment/cod", content=image_bytes(h, w), headers=PNG)
                for h, w in ((20, 2000), (2000, 20))
            ]

    WrappedBackend.infer = infer  # type: ignore[method-assign]
    try:
        responses = run(scenario())
    finally:
        WrappedBackend.infer = real_infer  # type: ignore[method-assign]
    from service_testing import decode_png

    assert [r.status_code for r in responses] == [200, 200]
    assert [decode_png(r.content).size for r in responses] == [(2000, 20), (20, 2000)]
    assert min(min(s) for s in shapes) == MIN_INPUT_SIDE


class ClosingWatcher(WrappedBackend):
    """Records the service's inference/assembly threads still alive when it is closed."""

    alive_at_close: list[list[str]] = []

    def close(self) -> None:
        names = [t.name for t in threading.enumerate() if t.name.startswith("focus-")]
        type(self).alive_at_close.append(names)
        super().close()


def test_executor_threads_stop_before_backends_close(make_settings, model_repository) -> None:
    ClosingWatcher.alive_at_close = []
    made: dict[str, Any] = {}
    app = create_app(
        make_settings(model_repository=model_repository, max_batch_size=2),
        backend_factory=factory(ClosingWatcher, made),
    )

    async def scenario():
        async with running_app(app) as client:
            responses = await asyncio.gather(
                *(
                    client.post(f"/segment/{task}", content=image_bytes(240, 320), headers=PNG)
                    for task in ("camouflage", "salient", "shadow")
                )
            )
        return responses

    assert [r.status_code for r in run(scenario())] == [200] * 3
    assert ClosingWatcher.alive_at_close == [[], [], []]  # every backend closed, no thread left
