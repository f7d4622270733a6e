"""Every task's ``ModelSlot``, the repository scan that reloads them, and the optional poller.

``reload`` is what ``POST /admin/reload``, ``FOCUS_REPOSITORY_POLL_S`` and a finished
``FOCUS_PULL`` all call: it rescans the repository (``models.repository``, torch-free) and
hands each task's pinned or highest version to its slot, which loads it beside the served one
and switches without dropping a request (service/model_slot.py). A task that appears in the
repository starts being served; one that disappears keeps its loaded model (removing a
directory must not take a task down). One reload runs at a time.

Like the slot, this module knows nothing about backends: ``load`` and ``unload`` come from
``service.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Generic

from models.repository import ModelEntry, RepositoryError, scan_versions
from models.tasks import canonical_task
from service.model_slot import M, ModelSlot, ReloadOutcome, describe_error

logger = logging.getLogger(__name__)


class ModelLifecycle(Generic[M]):
    """The served models of one service and how they change while it runs.

    Args:
        repository: the model repository directory.
        pins: task -> version to serve instead of the highest (``FOCUS_MODEL_VERSIONS``).
        load: builds and warms the model of an entry (raises on failure, leaving nothing).
        unload: releases a model no request is bound to any more.
        drain_timeout_s: how long a switch waits for the old version's requests.
        on_outcome: called with every reload outcome (metrics).
    """

    def __init__(
        self,
        repository: Path,
        *,
        pins: Mapping[str, int],
        load: Callable[[ModelEntry], Awaitable[M]],
        unload: Callable[[M], Awaitable[None]],
        drain_timeout_s: float,
        on_outcome: Callable[[ReloadOutcome], None] | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.pins = dict(pins)  # an admin reload with a version changes them
        self.slots: dict[str, ModelSlot[M]] = {}
        self._load = load
        self._unload = unload
        self._drain_timeout_s = drain_timeout_s
        self._on_outcome = on_outcome
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    def add(self, task: str, model: M) -> None:
        """Serve an already loaded and warm model (start-up)."""
        self.slots[task] = ModelSlot(
            task, model, load=self._load, unload=self._unload,
            drain_timeout_s=self._drain_timeout_s,
        )  # fmt: skip

    async def reload(
        self, task: str | None = None, version: int | None = None, *, polling: bool = False
    ) -> list[ReloadOutcome]:
        """Rescan the repository and serve what it says now, task by task.

        ``task`` limits the reload to one task (``UnknownTaskError`` for a bad name);
        ``version`` (with ``task``) pins it to that version from now on, once it serves.
        A version that fails keeps the old one serving; its outcome says why. ``polling`` skips
        versions that failed before (an explicit reload retries them). Raises
        ``RepositoryError`` when the repository cannot be read, or has no such task; nothing
        changes then.
        """
        async with self._lock:
            only = canonical_task(task) if task is not None else None
            found = await asyncio.to_thread(scan_versions, self.repository)
            if only is not None and only not in found:
                raise RepositoryError(f"no model for task {only!r} in {self.repository}")
            outcomes = []
            for name in sorted(found if only is None else {only}):
                pinned = version if name == only and version is not None else self.pins.get(name)
                outcome = await self._reload_task(name, found[name], pinned, polling=polling)
                if outcome is None:
                    continue
                outcomes.append(outcome)
                if self._on_outcome is not None:
                    self._on_outcome(outcome)
                if outcome.status != "unchanged":
                    log = logger.error if outcome.status == "failed" else logger.info
                    log("reload: %s", outcome.describe())
                if name == only and version is not None and outcome.status != "failed":
                    self.pins[name] = version  # later reloads and polls keep this version
            return outcomes

    async def _reload_task(
        self, task: str, versions: list[ModelEntry], pinned: int | None, *, polling: bool
    ) -> ReloadOutcome | None:
        slot = self.slots.get(task)
        current = slot.version if slot is not None else None
        match = [e for e in versions if pinned is None or e.version == pinned]
        if not match:
            have = ", ".join(str(e.version) for e in versions)
            reason = f"pinned version {pinned} is not in the repository (has {have})"
            return ReloadOutcome(task, "failed", pinned or 0, current, current, error=reason)
        entry = match[-1]
        if slot is not None:
            if polling and entry.version in slot.failed and entry.version != slot.version:
                return None  # failed before; an explicit reload retries it
            return await slot.switch_to(entry)
        try:
            model = await self._load(entry)
        except Exception as exc:
            logger.exception("%s: version %d failed to load", task, entry.version)
            return ReloadOutcome(task, "failed", entry.version, None, None,
                                 error=describe_error(exc))  # fmt: skip
        self.add(task, model)
        return ReloadOutcome(task, "loaded", entry.version, entry.version, None)

    def start_polling(self, interval_s: float) -> None:
        """``FOCUS_REPOSITORY_POLL_S``: reload every ``interval_s`` until :meth:`close`."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(interval_s), name="focus-poll")

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload(polling=True)  # logs what it switched and what failed
            except Exception:
                logger.exception("repository poll failed; serving what is loaded")

    async def close(self) -> None:
        """Stop polling, let a reload under way finish, release every model once drained."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        async with self._lock:
            await asyncio.gather(*(slot.close() for slot in self.slots.values()))
            self.slots.clear()
