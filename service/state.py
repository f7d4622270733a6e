"""What one app instance holds: settings, metrics, the loaded models and their batchers.

``ServiceState.start`` loads every model in the repository (in a worker thread), warms each
backend up with one inference, starts one ``DeviceExecutor`` per device and the batchers, and
only then marks the service ready. Shutting down has three steps: ``begin_drain`` (SIGTERM:
/health/ready turns 503 while requests are still served), ``stop_accepting`` (new requests get
503 ``shutting_down``) and ``stop`` (every slot drains in parallel within one
``FOCUS_TIMEOUT_S``, the executors' threads are joined, and only then are backends closed).

Each task's model sits in a ``ModelSlot`` (service/model_slot.py): requests bind to it with
``bind``; ``reload`` (service/lifecycle.py) rescans the repository and switches tasks to new
versions without dropping a request (also every ``FOCUS_REPOSITORY_POLL_S`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
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
from service.backends.factory import create_backend_from_settings
from service.batcher import Batcher
from service.cache import ResponseCache
from service.errors import ErrorCode, ServiceError
from service.executor import DeviceExecutor
from service.lifecycle import ModelLifecycle
from service.metrics import Metrics
from service.model_slot import ModelSlot, ReloadOutcome
from service.pipeline import limit_library_threads
from service.settings import MiB, Settings

logger = logging.getLogger(__name__)

BackendFactory = Callable[[ModelEntry, Settings], Backend]
T = TypeVar("T")


def default_backend_factory(entry: ModelEntry, settings: Settings) -> Backend:
    return create_backend_from_settings(entry, settings)


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
        self.lifecycle: ModelLifecycle[LoadedModel] = ModelLifecycle(
            settings.model_repository,
            pins=settings.pinned_versions,
            load=self._load_and_serve,
            unload=self._release,
            drain_timeout_s=settings.timeout_s,
            on_outcome=self._count_reload,
        )
        self.cache = (
            ResponseCache(int(settings.cache_mb * MiB), metrics) if settings.cache_mb > 0 else None
        )
        self.ready = False
        self.draining = False  # SIGTERM: /health/ready is 503, requests are still served
        self.stopping = False  # new requests are refused; admitted ones finish
        self.cpu_limiter: anyio.CapacityLimiter | None = None
        self.executors: dict[str, DeviceExecutor] = {}
        self._closing_backends: list[Backend] = []  # closed after the executors stopped
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

    def executor(self, device: str) -> DeviceExecutor:
        """The one executor of ``device`` (created and started on first use)."""
        executor = self.executors.get(device)
        if executor is None:
            executor = self.executors[device] = DeviceExecutor(device)
            executor.start()
        return executor

    @property
    def slots(self) -> dict[str, ModelSlot[LoadedModel]]:
        return self.lifecycle.slots

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(sorted(self.slots))

    @property
    def models(self) -> dict[str, LoadedModel]:
        """The active model of every task."""
        return {task: slot.active for task, slot in self.slots.items()}

    def model(self, name: str) -> LoadedModel:
        """The active model for a task name or alias; 404 ``unknown_task`` otherwise."""
        return self.slot(name).active

    @contextlib.asynccontextmanager
    async def bind(self, name: str) -> AsyncIterator[LoadedModel]:
        """The task's active model, kept for this request even if a reload switches meanwhile."""
        slot = self.slot(name)
        if self.stopping:
            raise ServiceError(ErrorCode.SHUTTING_DOWN, "the service is shutting down")
        async with slot.bind() as loaded:
            yield loaded

    def slot(self, name: str) -> ModelSlot[LoadedModel]:
        """The slot for a task name or alias; 404 ``unknown_task`` otherwise."""
        available = ", ".join(self.available) or "none"
        try:
            task = canonical_task(name)
        except UnknownTaskError:
            raise ServiceError(
                ErrorCode.UNKNOWN_TASK, f"unknown task {name!r}; available: {available}"
            ) from None
        slot = self.slots.get(task)
        if slot is None:
            raise ServiceError(
                ErrorCode.UNKNOWN_TASK, f"no model for task {task!r}; available: {available}"
            )
        return slot

    def _load(self) -> list[tuple[ModelEntry, Backend]]:
        entries = scan_repository(self.settings.model_repository, self.lifecycle.pins)
        loaded: list[tuple[ModelEntry, Backend]] = []
        try:
            for entry in entries.values():
                loaded.append((entry, self._load_backend(entry)))
        except BaseException:
            for _, backend in loaded:
                backend.close()
            raise
        return loaded

    def _load_backend(self, entry: ModelEntry) -> Backend:
        """Build and warm one version's backend (in a worker thread); nothing left on failure."""
        backend = self.backend_factory(entry, self.settings)
        try:
            logger.info("%s: version %d: loaded %s", entry.task, entry.version,
                        backend.describe())  # fmt: skip
            warm_up(backend)
        except BaseException:
            backend.close()
            raise
        return backend

    def _serve(self, entry: ModelEntry, backend: Backend) -> LoadedModel:
        """Start serving a loaded backend: its batcher, its ``focus_model_info`` series."""
        s = self.settings
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
        self.metrics.model_info.labels(**self._info_labels(entry, backend)).set(1)
        return LoadedModel(entry=entry, backend=backend, batcher=batcher)

    async def _release(self, loaded: LoadedModel) -> None:
        """Drain a model's batcher and free its backend (shutdown, or after a switch).

        The backend is closed only once no batch of it is assembled or computing (the
        executor's threads never run ``infer`` on a closed backend); at shutdown it is closed
        after the executors' threads have stopped.
        """
        batcher, timeout = loaded.batcher, self.settings.timeout_s
        try:
            await asyncio.wait_for(batcher.drain(), timeout)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            logger.warning("%s: queue not drained within %.1fs; failing the rest", loaded.task,
                           timeout)  # fmt: skip
        batcher.abort()  # anything still queued: 503 shutting_down
        if not await batcher.settled(timeout):
            logger.warning("%s: a batch is still computing after %.1fs", loaded.task, timeout)
        batcher.executor.unregister(batcher)
        if self.stopping:
            self._closing_backends.append(loaded.backend)
        else:
            loaded.backend.close()
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(
                *self._info_labels(loaded.entry, loaded.backend).values()
            )

    @staticmethod
    def _info_labels(entry: ModelEntry, backend: Backend) -> dict[str, str]:
        card = backend.card
        return {
            "task": entry.task,
            "backend": backend.name,
            "preset": card.preset,
            "version": card.version,
            "repository_version": str(entry.version),
            "precision": backend.precision,
        }

    async def _load_and_serve(self, entry: ModelEntry) -> LoadedModel:
        backend = await asyncio.to_thread(self._load_backend, entry)
        return self._serve(entry, backend)

    def _count_reload(self, outcome: ReloadOutcome) -> None:
        self.metrics.model_reloads.labels(task=outcome.task, outcome=outcome.status).inc()

    async def start(self) -> None:
        limit_library_threads()
        loaded = await asyncio.to_thread(self._load)
        for entry, backend in loaded:
            self.lifecycle.add(entry.task, self._serve(entry, backend))
        self.ready = True
        logger.info("ready: %s", ", ".join(
            f"{task} (version {slot.version})" for task, slot in sorted(self.slots.items())
        ))  # fmt: skip
        if self.settings.repository_poll_s > 0:
            self.lifecycle.start_polling(self.settings.repository_poll_s)

    async def reload(
        self, task: str | None = None, version: int | None = None
    ) -> list[ReloadOutcome]:
        """Serve what the repository holds now (``ModelLifecycle.reload``; FOCUS_PULL, admin)."""
        return await self.lifecycle.reload(task, version)

    def begin_drain(self) -> None:
        """SIGTERM: report not ready (load balancers stop routing), keep serving for now."""
        if not self.draining:
            logger.info("draining: /health/ready answers 503 from now on")
        self.draining = True
        self.ready = False

    def stop_accepting(self) -> None:
        """After the drain delay: new requests get 503 shutting_down; admitted ones finish."""
        self.begin_drain()
        self.stopping = True
        self.admission.accepting = False

    async def stop(self) -> None:
        """Drain every slot in parallel (one FOCUS_TIMEOUT_S), join threads, close backends."""
        started = time.perf_counter()
        self.stop_accepting()
        await self.lifecycle.close()  # each version released once its requests are done
        for executor in self.executors.values():
            await executor.stop(timeout=self.settings.timeout_s)
        for backend in self._closing_backends:
            backend.close()  # no executor thread is left to be inside infer
        self._closing_backends.clear()
        self.executors.clear()
        logger.info("stopped in %.2fs", time.perf_counter() - started)
        self.metrics.mark_process_dead()
