"""What one app instance holds: settings, metrics, the loaded models and their batchers.

``ServiceState.start`` loads every model in the repository (in a worker thread), warms each
backend up with one inference, starts one ``DeviceExecutor`` per device and the batchers, and
only then marks the service ready. Shutting down has three steps: ``begin_drain`` (SIGTERM:
/health/ready turns 503 while requests are still served), ``stop_accepting`` (new requests get
503 ``shutting_down``) and ``stop`` (every batcher drains in parallel within one
``FOCUS_TIMEOUT_S``, the executors' threads are joined, and only then are backends closed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from models.processing import preprocess_with_card
from models.repository import ModelEntry, scan_repository
from models.tasks import UnknownTaskError, canonical_task
from service.admission import Admission
from service.backends.base import Backend
from service.backends.factory import create_backend
from service.batcher import Batcher
from service.errors import ErrorCode, ServiceError
from service.executor import DeviceExecutor
from service.metrics import Metrics
from service.pipeline import limit_library_threads
from service.settings import Settings

logger = logging.getLogger(__name__)

BackendFactory = Callable[[ModelEntry, Settings], Backend]
T = TypeVar("T")


def default_backend_factory(entry: ModelEntry, settings: Settings) -> Backend:
    return create_backend(
        entry,
        backend=settings.backend,
        device=settings.device,
        require_gpu=settings.require_gpu,
        intra_op_threads=settings.inference_threads,
        engine_cache=settings.engine_cache,
    )


@dataclass
class LoadedModel:
    entry: ModelEntry
    backend: Backend
    batcher: Batcher

    @property
    def task(self) -> str:
        return self.entry.task


def cpu_slots() -> int:
    """Concurrent decode/pre/post-processing jobs: the usable cores, at least two."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(2, cores)


def warm_up(backend: Backend) -> None:
    """One inference at the most common padded shape (a 4:3 landscape image), batch 1."""
    card = backend.card
    short = card.input_short_side
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(short, short * 4 // 3, 3), dtype=np.uint8)
    prepared = preprocess_with_card(rgb, card)
    backend.infer(prepared.image[None], prepared.edges[None])


class ServiceState:
    def __init__(
        self, settings: Settings, metrics: Metrics, backend_factory: BackendFactory
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.backend_factory = backend_factory
        self.models: dict[str, LoadedModel] = {}
        self.executors: dict[str, DeviceExecutor] = {}
        self.ready = False
        self.draining = False
        self.cpu_limiter: anyio.CapacityLimiter | None = None
        self.admission = Admission(
            max_inflight_per_task=settings.max_inflight_per_task,
            max_inflight_pixels=settings.max_inflight_pixels,
            metrics=metrics,
        )

    async def run_cpu(self, func: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound image work in the thread pool, at most ``cpu_slots`` at a time.

        Bounding it (rather than anyio's 40 threads) keeps the memory of decoded images and the
        CPU oversubscription of a burst in check; the batcher's inference thread is separate.
        """
        if self.cpu_limiter is None:
            self.cpu_limiter = anyio.CapacityLimiter(cpu_slots())
        return await anyio.to_thread.run_sync(func, *args, limiter=self.cpu_limiter)

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(sorted(self.models))

    def model(self, name: str) -> LoadedModel:
        """The loaded model for a task name or alias; 404 ``unknown_task`` otherwise."""
        available = ", ".join(self.available) or "none"
        try:
            task = canonical_task(name)
        except UnknownTaskError:
            raise ServiceError(
                ErrorCode.UNKNOWN_TASK, f"unknown task {name!r}; available: {available}"
            ) from None
        loaded = self.models.get(task)
        if loaded is None:
            raise ServiceError(
                ErrorCode.UNKNOWN_TASK, f"no model for task {task!r}; available: {available}"
            )
        return loaded

    def _load(self) -> list[tuple[ModelEntry, Backend]]:
        entries = scan_repository(self.settings.model_repository)
        loaded: list[tuple[ModelEntry, Backend]] = []
        try:
            for entry in entries.values():
                backend = self.backend_factory(entry, self.settings)
                logger.info("%s: loaded %s", entry.task, backend.describe())
                warm_up(backend)
                loaded.append((entry, backend))
        except BaseException:
            for _, backend in loaded:
                backend.close()
            raise
        return loaded

    def executor(self, device: str) -> DeviceExecutor:
        """The one executor of ``device`` (created and started on first use)."""
        executor = self.executors.get(device)
        if executor is None:
            executor = self.executors[device] = DeviceExecutor(device)
            executor.start()
        return executor

    async def start(self) -> None:
        limit_library_threads()
        loaded = await asyncio.to_thread(self._load)
        s = self.settings
        for entry, backend in loaded:
            batcher = Batcher(
                entry.task,
                backend,
                max_batch_size=s.max_batch_size,
                max_delay_s=s.max_delay_s,
                max_queue=s.max_queue,
                metrics=self.metrics,
                executor=self.executor(backend.device),
            )
            batcher.start()
            self.models[entry.task] = LoadedModel(entry=entry, backend=backend, batcher=batcher)
            card = backend.card
            self.metrics.model_info.labels(
                task=entry.task, backend=backend.name, preset=card.preset, version=card.version
            ).set(1)
        self.ready = True
        logger.info("ready: %s", ", ".join(self.available))

    def begin_drain(self) -> None:
        """SIGTERM: report not ready (load balancers stop routing), keep serving for now."""
        if not self.draining:
            logger.info("draining: /health/ready answers 503 from now on")
        self.draining = True
        self.ready = False

    def stop_accepting(self) -> None:
        """After the drain delay: new requests get 503 shutting_down; admitted ones finish."""
        self.begin_drain()
        self.admission.accepting = False

    async def stop(self) -> None:
        """Drain every batcher in parallel (one FOCUS_TIMEOUT_S), join threads, close backends."""
        self.stop_accepting()
        timeout = self.settings.timeout_s
        models = list(self.models.values())
        started = time.perf_counter()
        drains = [asyncio.ensure_future(m.batcher.drain()) for m in models]
        if drains:
            _, late = await asyncio.wait(drains, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                logger.warning("queues not drained within %.1fs; failing the rest", timeout)
        for executor in self.executors.values():
            await executor.stop(timeout=max(0.0, timeout - (time.perf_counter() - started)))
        for m in models:
            m.batcher.abort()  # anything still queued after the timeout: 503
            m.backend.close()  # no executor thread can be inside infer any more
        self.executors.clear()
        self.models.clear()
        logger.info("stopped in %.2fs", time.perf_counter() - started)
        self.metrics.mark_process_dead()
