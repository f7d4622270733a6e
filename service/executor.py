"""One inference executor per device, shared by every batcher (DESIGN "The service at run time").

Every task's backend runs on the same cores (or the same GPU); giving each task its own worker
thread and its own full-size runtime thread pool runs five batches on two cores at once, each
slower than one alone. The executor runs exactly one batch at a time per device, with every
runtime's threads sized from one setting (``Settings.inference_threads``).

Two stages, connected by a one-batch slot, so the next batch is assembled while the current one
computes:

* the **assembler** (a coroutine) waits for the slot to be free, picks the next batch *fairly*
  (round-robin over the batchers that have a batch ready: full, or ``max_delay`` passed, or
  draining) and stacks its inputs in its own thread (``np.stack`` of a whole batch is tens of
  megabytes of copying: never on the event loop);
* the **runner** (a coroutine) takes the slot, runs ``backend.infer`` in the inference thread
  and hands the outputs back to the batch's batcher, which resolves every future of the batch
  (or fails them all when the backend raised).

``stop`` lets the runner finish the batch it is computing (a thread cannot be cancelled, and
its futures must be resolved), fails an assembled batch it did not get to, and joins both
threads, so backends are closed only after no thread can still be inside ``infer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.batcher import Batcher, Ticket

logger = logging.getLogger(__name__)


def assemble(tickets: Sequence[Ticket]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the tickets' inputs into one batch: float32 [N, 3, Hp, Wp] x2."""
    if len(tickets) == 1:
        return tickets[0].image[None], tickets[0].edges[None]
    return np.stack([t.image for t in tickets]), np.stack([t.edges for t in tickets])


@dataclass
class _Job:
    batcher: Batcher
    tickets: list[Ticket]
    images: np.ndarray
    edges: np.ndarray


class DeviceExecutor:
    """Runs the batches of every registered batcher, one at a time, fairly across them."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._sources: list[Batcher] = []
        self._next = 0  # round-robin position in _sources
        self._wakeup = asyncio.Event()
        self._slot: _Job | None = None
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self._slot_full = asyncio.Event()
        self._assembling_done = False
        self._closing = False
        self._abandon = False  # stop's timeout passed: run no further batch
        self._stack_pool = ThreadPoolExecutor(1, thread_name_prefix=f"focus-assemble-{device}")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix=f"focus-infer-{device}")
        self._assembler: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self.batches_run = 0

    # ------------------------------------------------------------------ public API

    @property
    def running(self) -> bool:
        tasks = (self._assembler, self._runner)
        return all(t is not None and not t.done() for t in tasks)

    @property
    def assembled(self) -> int:
        """Tickets assembled into the next batch, waiting for the device (0 when none)."""
        return len(self._slot.tickets) if self._slot is not None else 0

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return tuple(t for t in (self._assembler, self._runner) if t is not None)

    def start(self) -> None:
        if self._runner is None:
            loop = asyncio.get_running_loop()
            name = f"focus-{{}}-{self.device}"
            self._assembler = loop.create_task(self._assemble(), name=name.format("assemble"))
            self._runner = loop.create_task(self._run(), name=name.format("infer"))

    def register(self, batcher: Batcher) -> None:
        if batcher not in self._sources:
            self._sources.append(batcher)

    def unregister(self, batcher: Batcher) -> None:
        if batcher in self._sources:
            index = self._sources.index(batcher)
            self._sources.remove(batcher)
            if index < self._next:
                self._next -= 1
            self._next = self._next % len(self._sources) if self._sources else 0

    def notify(self) -> None:
        """A batcher's queue changed (new ticket, abandoned ticket, draining)."""
        self._wakeup.set()

    async def stop(self, timeout: float) -> None:
        """Finish what is queued within ``timeout``, then stop both stages and join the threads.

        The batch being computed always finishes (its futures are resolved either way); an
        assembled batch still waiting after ``timeout`` fails with 503 ``shutting_down``.
        """
        self._closing = True
        self.notify()
        tasks = self.tasks
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=timeout)
            if len(done) < len(tasks):
                logger.warning("%s executor: not drained after %.1fs", self.device, timeout)
            if self._assembler is not None and not self._assembler.done():
                self._assembler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._assembler
            self._assembling_done = True
            self._abandon = len(done) < len(tasks)
            self._slot_full.set()  # the runner exits after its current batch
            if self._runner is not None:
                while not self._runner.done():  # never cancelled inside infer: wait for it
                    finished, _ = await asyncio.wait({self._runner}, timeout=timeout)
                    if not finished:
                        logger.warning("%s executor: a batch is still computing", self.device)
        job, self._slot = self._slot, None
        if job is not None:
            job.batcher.abort(job.tickets)
        for pool in (self._stack_pool, self._infer_pool):
            await asyncio.to_thread(pool.shutdown, wait=True)

    # ------------------------------------------------------------------ assembler

    def _pick(self, now: float) -> tuple[Batcher, list[Ticket]] | float | None:
        """A ready batch (round-robin), else the earliest time one will be ready (or None)."""
        earliest: float | None = None
        count = len(self._sources)
        for offset in range(count):
            index = (self._next + offset) % count
            batcher = self._sources[index]
            at = batcher.ready_at()
            if at is None:
                continue
            if at <= now:
                tickets = batcher.take(now)
                if tickets:
                    self._next = (index + 1) % count
                    return batcher, tickets
                continue  # every ticket of it had expired; it may still hold others
            earliest = at if earliest is None else min(earliest, at)
        return earliest

    async def _next_batch(self) -> tuple[Batcher, list[Ticket]] | None:
        while True:
            now = time.perf_counter()
            picked = self._pick(now)
            if isinstance(picked, tuple):
                return picked
            if picked is None and self._closing:
                return None  # nothing queued anywhere and nothing more will come
            self._wakeup.clear()
            timeout = None if picked is None else max(0.0, picked - now)
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before 3.11
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _assemble(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._slot_free.wait()
                picked = await self._next_batch()
                if picked is None:
                    return
                batcher, tickets = picked
                try:
                    images, edges = await loop.run_in_executor(self._stack_pool, assemble, tickets)
                except BaseException:
                    batcher.abort(tickets)
                    raise
                self._slot = _Job(batcher, tickets, images, edges)
                self._slot_free.clear()
                self._slot_full.set()
        finally:
            self._assembling_done = True
            self._slot_full.set()

    # ------------------------------------------------------------------ runner

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slot_full.wait()
            if self._abandon:
                return  # stop() fails what is left in the slot
            job, self._slot = self._slot, None
            self._slot_full.clear()
            self._slot_free.set()
            if job is None:
                if self._assembling_done:
                    return
                continue
            if all(t.future.done() for t in job.tickets):  # all abandoned while assembled
                job.batcher.skip(job.tickets)
                continue
            backend = job.batcher.backend
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._infer_pool, backend.infer, job.images, job.edges
                )
            except Exception as exc:  # any backend failure fails this batch only
                job.batcher.finish(job.tickets, started, error=exc)
            else:
                job.batcher.finish(job.tickets, started, outputs=outputs)
            self.batches_run += 1
            if self._assembling_done and self._slot is None:
                return
