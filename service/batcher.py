"""Dynamic batching per task and padded input shape (text-embeddings-inference's queue design).

Every request is a ``Ticket`` carrying its own ``asyncio.Future``. A batcher keeps one queue of
tickets per padded shape; the device's ``DeviceExecutor`` (``service/executor.py``) asks it for
its next batch when the device is about to be free: up to ``max_batch_size`` tickets *with the
same padded shape*, once that many are queued or ``max_delay`` has passed since the oldest
arrived. The batcher owns no thread and no task: inference runs only in the executor.

Batching only same-shape images keeps every mask independent of its batch-mates: no extra
padding ever enters an image's input, so an image gives the same mask alone or in a burst
(DESIGN "Batching").

* The queue is bounded: ``submit`` raises 503 ``queue_full`` (with Retry-After) past
  ``max_queue`` waiting tickets. Only live tickets count: a ticket whose client went away or
  whose deadline passed leaves the queue (and the batch being filled) at once, and is counted
  in ``focus_dropped_requests_total{reason}``.
* A backend exception fails exactly the futures of that batch (500 ``backend_error``); the
  executor carries on with the next batch, so the service stays ready.
* ``close`` refuses new tickets (503 ``shutting_down``); ``drain`` waits until every queued
  ticket was computed; ``abort`` fails what could not be.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.backends.base import Backend
from service.errors import ErrorCode, ServiceError
from service.executor import DeviceExecutor
from service.metrics import Metrics

logger = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, np.ndarray]  # (class_probs [2, 2], mask_logits [2, Hp/4, Wp/4])
Shape = tuple[int, int]


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
    queued: bool = True  # still in its batcher's queue (not yet taken for a batch)
    leave: Callable[[Ticket], None] | None = field(default=None, repr=False)
    shape: Shape = field(init=False)

    def __post_init__(self) -> None:
        self.shape = (int(self.image.shape[1]), int(self.image.shape[2]))

    def cancel(self, reason: str) -> None:
        """Abandon the request (client gone, deadline); it leaves the queue at once."""
        if not self.future.done():
            self.cancel_reason = reason
            self.future.cancel()
            if self.queued and self.leave is not None:
                self.leave(self)  # now, not at the next loop turn: the queue never counts it


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
        executor: DeviceExecutor,
    ) -> None:
        limit = backend.max_batch if backend.max_batch is not None else max_batch_size
        self.task = task
        self.backend = backend
        self.executor = executor
        self.max_batch_size = max(1, min(max_batch_size, limit))
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: dict[Shape, deque[Ticket]] = {}
        self._size = 0  # live tickets queued
        self._inflight = 0  # batches taken by the executor and not finished yet
        self._seq = itertools.count()
        self._closing = False
        self._started = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._queue_depth = metrics.queue_depth.labels(task=task)
        self._queue_duration = metrics.queue_duration.labels(task=task)
        self._compute_duration = metrics.compute_duration.labels(task=task, backend=backend.name)
        self._batch_size = metrics.batch_size.labels(task=task)
        self._queue_depth.set(0)

    # ------------------------------------------------------------------ public API

    @property
    def queued(self) -> int:
        """Live tickets waiting (abandoned ones are not counted)."""
        return self._size

    @property
    def running(self) -> bool:
        return self._started and not self._closing and self.executor.running

    def start(self) -> None:
        self._started = True
        self.executor.register(self)

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
            leave=self._abandoned,
        )
        ticket.future.add_done_callback(lambda _: self._abandoned(ticket))
        self._pending.setdefault(ticket.shape, deque()).append(ticket)
        self._size += 1
        self._idle.clear()
        self._queue_depth.set(self._size)
        self.executor.notify()
        return ticket

    def close(self) -> None:
        """Refuse new tickets; everything queued becomes ready for the executor at once."""
        self._closing = True
        self.executor.notify()

    async def drain(self) -> None:
        """Close, then wait until every queued ticket was computed and every batch finished."""
        self.close()
        await self._idle.wait()

    async def settled(self, timeout: float) -> bool:
        """Wait until no batch of this batcher is assembled or computing; False on timeout."""
        deadline = time.perf_counter() + timeout
        while self._inflight > 0:
            if time.perf_counter() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def abort(self, tickets: list[Ticket] | None = None) -> None:
        """Fail ``tickets`` (a batch taken but never run) or every queued ticket with 503."""
        if tickets is None:
            tickets = [t for q in self._pending.values() for t in q]
            self._pending.clear()
            self._size = 0
            self._queue_depth.set(0)
        else:
            self._inflight -= 1
        for ticket in tickets:
            ticket.queued = False
            if not ticket.future.done():
                self.metrics.dropped.labels(task=self.task, reason="shutdown").inc()
                ticket.future.set_exception(
                    ServiceError(ErrorCode.SHUTTING_DOWN, "the service is shutting down")
                )
        self._update_idle()

    # ------------------------------------------------------------------ executor side

    def _ready_time(self, queue: deque[Ticket]) -> float:
        oldest = queue[0].enqueued_at
        if self._closing or len(queue) >= self.max_batch_size:
            return oldest
        return oldest + self.max_delay_s

    def ready_at(self) -> float | None:
        """When this batcher's next batch is ready (may be in the past); None when empty."""
        if not self._pending:
            return None
        return min(self._ready_time(q) for q in self._pending.values())

    def take(self, now: float) -> list[Ticket]:
        """Pop the ready batch (up to max_batch_size live tickets of one shape)."""
        shape = min(self._pending, key=lambda s: self._ready_time(self._pending[s]))
        queue = self._pending[shape]
        batch: list[Ticket] = []
        while queue and len(batch) < self.max_batch_size:
            ticket = queue.popleft()
            ticket.queued = False
            self._size -= 1
            if ticket.future.done():  # abandoned; its done-callback has not run yet
                self._count_abandoned(ticket)
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
        if batch:
            self._inflight += 1
        self._update_idle()
        return batch

    def finish(
        self,
        batch: list[Ticket],
        started: float,
        *,
        outputs: tuple[np.ndarray, np.ndarray] | None = None,
        error: Exception | None = None,
    ) -> None:
        """Resolve every future of a computed batch (or fail them all with the backend error)."""
        self._inflight -= 1
        n = len(batch)
        for ticket in batch:
            ticket.queue_s = started - ticket.enqueued_at
            self._queue_duration.observe(ticket.queue_s)
        if outputs is None:
            logger.error(
                "%s: %s failed on a batch of %d", self.task, self.backend.name, n, exc_info=error
            )
            name = type(error).__name__ if error is not None else "no outputs"
            message = (
                f"the {self.backend.name} backend failed on this request's batch "
                f"({name}); see the server log"
            )
            for ticket in batch:
                if not ticket.future.done():
                    ticket.future.set_exception(ServiceError(ErrorCode.BACKEND_ERROR, message))
            self._update_idle()
            return
        class_probs, mask_logits = outputs
        elapsed = time.perf_counter() - started
        self._compute_duration.observe(elapsed)
        self._batch_size.observe(n)
        for i, ticket in enumerate(batch):
            ticket.compute_s = elapsed
            ticket.batch_size = n
            if not ticket.future.done():
                ticket.future.set_result((class_probs[i], mask_logits[i]))
        self._update_idle()

    def skip(self, batch: list[Ticket]) -> None:
        """A taken batch whose every ticket was abandoned before it ran: count, never compute."""
        self._inflight -= 1
        for ticket in batch:
            self._count_abandoned(ticket)
        self._update_idle()

    # ------------------------------------------------------------------ internals

    def _abandoned(self, ticket: Ticket) -> None:
        """A cancelled ticket still queued leaves the queue (from ``cancel`` or its callback)."""
        if not ticket.queued:
            return
        ticket.queued = False
        queue = self._pending.get(ticket.shape)
        if queue is not None:
            try:
                queue.remove(ticket)
            except ValueError:  # pragma: no cover - queued tickets are always in their queue
                return
            if not queue:
                del self._pending[ticket.shape]
        self._size -= 1
        self._queue_depth.set(self._size)
        self._count_abandoned(ticket)
        self._update_idle()
        self.executor.notify()

    def _count_abandoned(self, ticket: Ticket) -> None:
        reason = ticket.cancel_reason or "cancelled"
        self.metrics.dropped.labels(task=self.task, reason=reason).inc()

    def _update_idle(self) -> None:
        if self._size == 0 and self._inflight == 0:
            self._idle.set()
        else:
            self._idle.clear()
