"""One task's place in the service: the active model, at most one staging version, the switch.

DESIGN "The service at run time": a request binds to the active model when it is admitted
(:meth:`ModelSlot.bind`) and keeps it until its response is written, whatever happens to the
slot meanwhile. A reload (:meth:`ModelSlot.switch_to`) loads and warms the new version *beside*
the old one — the old keeps serving throughout — then swaps the active model in one assignment
(new requests bind to the new version from that instant), waits for the requests bound to the
old one to finish and only then releases it. A version that fails to load or to warm is
released, recorded with its reason, and the old one keeps serving (Triton's semantics).

The slot knows nothing about backends or batchers: ``load`` and ``unload`` (from
``service.state``) build and release whatever a served model is, so this module is testable
alone and stays out of the way of the batching and execution code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from models.repository import ModelEntry

logger = logging.getLogger(__name__)


class Served(Protocol):
    """What a slot holds: anything that knows its repository entry (``state.LoadedModel``)."""

    @property
    def entry(self) -> ModelEntry: ...


M = TypeVar("M", bound=Served)
ReloadStatus = Literal["loaded", "unchanged", "failed"]


@dataclass(frozen=True)
class ReloadOutcome:
    """What one task's reload did; ``serving`` is the version answering requests afterwards."""

    task: str
    status: ReloadStatus
    requested: int  # the repository version the reload asked for
    serving: int | None  # None: the task has no model (a new task whose load failed)
    previous: int | None  # the version served before (None: the task is new)
    error: str | None = None  # why a failed version is not served

    def describe(self) -> str:
        if self.status == "failed":
            still = (
                f"still serving version {self.serving}"
                if self.serving is not None
                else "the task is not served"
            )
            return f"{self.task}: version {self.requested} not served ({self.error}); {still}"
        if self.status == "unchanged":
            return f"{self.task}: version {self.serving} already served"
        return f"{self.task}: version {self.previous} -> {self.serving}"


class _Binding(Generic[M]):
    """A model and the requests bound to it (``idle`` is set when there are none)."""

    def __init__(self, model: M) -> None:
        self.model = model
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed load or warm-up (the exception type and first line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class ModelSlot(Generic[M]):
    """The served version of one task; see the module docstring.

    Args:
        task: canonical task name.
        active: the model serving at creation (already loaded and warm).
        load: builds and warms the model of an entry (raises on failure, leaving nothing).
        unload: releases a model once no request is bound to it any more.
        drain_timeout_s: how long a switch waits for the old model's requests before releasing
            it anyway (the server's request deadline: no request outlives it).
    """

    def __init__(
        self,
        task: str,
        active: M,
        *,
        load: Callable[[ModelEntry], Awaitable[M]],
        unload: Callable[[M], Awaitable[None]],
        drain_timeout_s: float,
    ) -> None:
        self.task = task
        self._current: _Binding[M] = _Binding(active)
        self._load = load
        self._unload = unload
        self.drain_timeout_s = drain_timeout_s
        self.staging: ModelEntry | None = None  # the version being loaded, during a switch
        self.failed: dict[int, str] = {}  # version -> why it is not served (latest attempt)
        self._lock = asyncio.Lock()  # one switch at a time; close waits for it
        self._closed = False

    @property
    def active(self) -> M:
        return self._current.model

    @property
    def version(self) -> int:
        return self._current.model.entry.version

    @property
    def bound(self) -> int:
        """Requests bound to the active model right now."""
        return self._current.count

    @contextlib.asynccontextmanager
    async def bind(self) -> AsyncIterator[M]:
        """The active model, held for this request until the block exits (even mid-switch)."""
        binding = self._current
        binding.count += 1
        binding.idle.clear()
        try:
            yield binding.model
        finally:
            binding.count -= 1
            if binding.count == 0:
                binding.idle.set()

    async def switch_to(self, entry: ModelEntry) -> ReloadOutcome:
        """Serve ``entry``: load and warm it beside the active model, swap, drain the old one.

        Never raises for a model that fails to load or warm: the outcome says why, and the
        active model is untouched.
        """
        async with self._lock:
            old = self._current
            previous = old.model.entry
            if entry.version == previous.version and entry.directory == previous.directory:
                v = entry.version
                return ReloadOutcome(self.task, "unchanged", v, v, v)
            if self._closed:
                return self._failure(entry, "the service is shutting down")
            self.staging = entry
            try:
                model = await self._load(entry)
            except Exception as exc:
                logger.exception(
                    "%s: version %d failed to load; still serving version %d",
                    self.task, entry.version, previous.version,
                )  # fmt: skip
                return self._failure(entry, describe_error(exc))
            finally:
                self.staging = None
            self._current = _Binding(model)  # new requests bind to the new version from here
            self.failed.pop(entry.version, None)
            logger.info("%s: serving version %d (was %d)", self.task, entry.version,
                        previous.version)  # fmt: skip
            await self._drain(old)
            return ReloadOutcome(self.task, "loaded", entry.version, entry.version,
                                 previous.version)  # fmt: skip

    async def close(self) -> None:
        """Release the active model once its requests are done (waits for a switch under way)."""
        async with self._lock:
            self._closed = True
            await self._drain(self._current)

    def _failure(self, entry: ModelEntry, reason: str) -> ReloadOutcome:
        self.failed[entry.version] = reason
        return ReloadOutcome(
            self.task, "failed", entry.version, self.version, self.version, error=reason
        )

    async def _drain(self, binding: _Binding[M]) -> None:
        try:
            await asyncio.wait_for(binding.idle.wait(), self.drain_timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            logger.warning(
                "%s: %d request(s) still on version %d after %.1fs; releasing it anyway",
                self.task, binding.count, binding.model.entry.version, self.drain_timeout_s,
            )  # fmt: skip
        await self._unload(binding.model)
