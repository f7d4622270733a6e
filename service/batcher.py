"""Dynamic batching per task and padded input shape (text-embeddings-inference's queue design).

One owner task per served task owns the queue; every request is a ``Ticket`` carrying its own
``asyncio.Future``. The owner takes the oldest waiting ticket, then waits until
``max_batch_size`` tickets *with the same padded shape* are queued or ``max_delay`` has passed
since that oldest ticket arrived, and runs the backend on that batch in its own worker thread
(one batch in flight per task; the event loop never blocks on inference).

Batching only same-shape images keeps every mask independent of its batch-mates: no extra
padding ever enters an image's input, so an image gives the same mask alone or in a burst
(DESIGN "Batching").

* The queue is bounded: ``submit`` raises 503 ``queue_full`` (with Retry-After) past
  ``max_queue`` waiting tickets.
* Tickets whose client went away or whose deadline passed are dropped before compute and
  counted in ``focus_dropped_requests_total{reason}``.
* A backend exception fails exactly the futures of that batch (500 ``backend_error``); the owner
  carries on with the next batch, so the service stays ready.
* ``stop`` refuses new tickets (503 ``shutting_down``), computes everything already queued, and
  only then returns (graceful drain); tickets still queued after ``drain_timeout`` fail with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.backends.base import Backend
from service.errors import ErrorCode, ServiceError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, np.ndarray]  # (class_probs [2, 2], mask_logits [2, Hp/4, Wp/4])


@dataclass(eq=False)
class Ticket:
    """One request's place in the queue and its private reply channel."""

    image: np.ndarray  # float32 [3, Hp, Wp]
    edges: np.ndarray  # float32 [3, Hp, Wp]
    future: asyncio.Future[Outputs]
    enqueued_at: float
    deadline: float
    seq: int
    cancel_reason: str | None = None
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 0
    shape: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.shape = (int(self.image.shape[1]), int(self.image.shape[2]))

    def cancel(self, reason: str) -> None:
        """Abandon the request (client gone, deadline); the owner drops it before compute."""
        if not self.future.done():
            self.cancel_reason = reason
            self.future.cancel()


class Batcher:
    def __init__(
        self,
        task: str,
        backend: Backend,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        limit = backend.max_batch if backend.max_batch is not None else max_batch_size
        self.task = task
        self.backend = backend
        self.max_batch_size = max(1, min(max_batch_size, limit))
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: dict[tuple[int, int], deque[Ticket]] = {}
        self._size = 0
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._owner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"focus-{task}")
        self._queue_depth = metrics.queue_depth.labels(task=task)
        self._queue_duration = metrics.queue_duration.labels(task=task)
        self._compute_duration = metrics.compute_duration.labels(task=task, backend=backend.name)
        self._batch_size = metrics.batch_size.labels(task=task)
        self._queue_depth.set(0)

    # ------------------------------------------------------------------ public API

    @property
    def queued(self) -> int:
        return self._size

    @property
    def running(self) -> bool:
        return self._owner is not None and not self._owner.done()

    def start(self) -> None:
        if self._owner is None:
            self._owner = asyncio.get_running_loop().create_task(
                self._run(), name=f"focus-batcher-{self.task}"
            )

    def submit(self, image: np.ndarray, edges: np.ndarray, deadline: float) -> Ticket:
        """Queue one image; await ``ticket.future`` for its outputs."""
        if self._closing or not self.running:
            raise ServiceError(ErrorCode.SHUTTING_DOWN, "the service is shutting down")
        if self._size >= self.max_queue:
            self.metrics.dropped.labels(task=self.task, reason="queue_full").inc()
            raise ServiceError(
                ErrorCode.QUEUE_FULL,
                f"the {self.task} queue is full ({self.max_queue} requests waiting); retry later",
            )
        loop = asyncio.get_running_loop()
        ticket = Ticket(
            image=image,
            edges=edges,
            future=loop.create_future(),
            enqueued_at=time.perf_counter(),
            deadline=deadline,
            seq=next(self._seq),
        )
        self._pending.setdefault(ticket.shape, deque()).append(ticket)
        self._size += 1
        self._queue_depth.set(self._size)
        self._wakeup.set()
        return ticket

    async def stop(self, drain_timeout: float) -> None:
        """Refuse new tickets, compute the queued ones, then stop the owner and its thread."""
        self._closing = True
        self._wakeup.set()
        owner, self._owner = self._owner, None
        if owner is not None and not owner.done():
            try:
                await asyncio.wait_for(asyncio.shield(owner), drain_timeout)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                logger.warning("%s: queue not drained after %.1fs", self.task, drain_timeout)
                owner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await owner
        elif owner is not None and not owner.cancelled() and owner.exception() is not None:
            logger.error("%s: the batcher had stopped", self.task, exc_info=owner.exception())
        for ticket in self._take_all():
            if not ticket.future.done():
                self.metrics.dropped.labels(task=self.task, reason="shutdown").inc()
                ticket.future.set_exception(
                    ServiceError(ErrorCode.SHUTTING_DOWN, "the service is shutting down")
                )
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ owner task

    async def _run(self) -> None:
        while True:
            if self._size == 0:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            shape = self._oldest_shape()
            await self._wait_for_batch(shape)
            batch = self._take(shape)
            if batch:
                await self._compute(batch)

    def _oldest_shape(self) -> tuple[int, int]:
        return min(self._pending.items(), key=lambda kv: kv[1][0].seq)[0]

    async def _wait_for_batch(self, shape: tuple[int, int]) -> None:
        """Until the shape's queue holds a full batch or max_delay passed since its oldest."""
        queue = self._pending[shape]
        close_at = queue[0].enqueued_at + self.max_delay_s
        while len(queue) < self.max_batch_size and not self._closing:
            remaining = close_at - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                return

    def _take(self, shape: tuple[int, int]) -> list[Ticket]:
        """Pop up to a batch of live tickets of ``shape``; drop abandoned and expired ones."""
        queue = self._pending[shape]
        batch: list[Ticket] = []
        now = time.perf_counter()
        while queue and len(batch) < self.max_batch_size:
            ticket = queue.popleft()
            self._size -= 1
            if ticket.future.done():  # cancelled by its waiter: client gone or deadline
                reason = ticket.cancel_reason or "cancelled"
                self.metrics.dropped.labels(task=self.task, reason=reason).inc()
            elif now >= ticket.deadline:
                self.metrics.dropped.labels(task=self.task, reason="deadline").inc()
                ticket.future.set_exception(
                    ServiceError(ErrorCode.TIMEOUT, "the request deadline passed in the queue")
                )
            else:
                batch.append(ticket)
        if not queue:
            del self._pending[shape]
        self._queue_depth.set(self._size)
        return batch

    def _take_all(self) -> list[Ticket]:
        tickets = [t for q in self._pending.values() for t in q]
        self._pending.clear()
        self._size = 0
        self._queue_depth.set(0)
        return tickets

    async def _compute(self, batch: list[Ticket]) -> None:
        started = time.perf_counter()
        for ticket in batch:
            ticket.queue_s = started - ticket.enqueued_at
            self._queue_duration.observe(ticket.queue_s)
        n = len(batch)
        loop = asyncio.get_running_loop()
        try:
            if n == 1:
                images, edges = batch[0].image[None], batch[0].edges[None]
            else:
                images = np.stack([t.image for t in batch])
                edges = np.stack([t.edges for t in batch])
            class_probs, mask_logits = await loop.run_in_executor(
                self._executor, self.backend.infer, images, edges
            )
        except Exception as exc:  # any backend failure fails this batch only
            logger.exception("%s: %s failed on a batch of %d", self.task, self.backend.name, n)
            message = (
                f"the {self.backend.name} backend failed on this request's batch "
                f"({type(exc).__name__}); see the server log"
            )
            for ticket in batch:
                if not ticket.future.done():
                    ticket.future.set_exception(ServiceError(ErrorCode.BACKEND_ERROR, message))
            return
        elapsed = time.perf_counter() - started
        self._compute_duration.observe(elapsed)
        self._batch_size.observe(n)
        for i, ticket in enumerate(batch):
            ticket.compute_s = elapsed
            ticket.batch_size = n
            if not ticket.future.done():
                ticket.future.set_result((class_probs[i], mask_logits[i]))
