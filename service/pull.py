"""``FOCUS_PULL`` at start-up: released checkpoints pulled into the model repository.

The service stays torch-free and never imports ``export``: each entry runs ``focus pull`` (the
CLI, :mod:`export.pull`) as a subprocess of this interpreter, one at a time (a FOCUS-L export
needs several GB of memory), its output logged line by line as ``pull <task>: ...``.

* An entry whose task already has a version pulled from the same Hub file (at the pinned
  commit, if the entry pins one) is not pulled again: a restart costs no download and needs no
  network. ``focus pull`` by hand checks the Hub for a newer revision.
* Default: the service starts with what the repository holds (the demo models), the pulls run in
  the background, and each published version is handed to ``reload`` so the service switches to
  it without a restart. A failed pull is logged as an error; the task keeps its demo model.
* ``FOCUS_REQUIRE_PULL=true``: the pulls run before the service loads anything; the first that
  fails stops start-up with its step and message (:class:`PullFailedError`).

``focus pull`` exits 3 where torch or huggingface_hub is missing (the torch-free CPU and GPU
images): that is reported as such, with how to get an image that can pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from models.repository import RepositoryError, scan_versions
from models.zoo import Source, pulled_from

logger = logging.getLogger(__name__)

EXIT_UNAVAILABLE = 3  # export.cli: torch / huggingface_hub missing
# tqdm (the Hub's progress bar) redraws every 0.1 s; into a log, every 10 s is plenty
_PROGRESS_ENV = {"TQDM_MININTERVAL": "10"}
_LINES = re.compile(r"[\r\n]+")

Reload = Callable[[str], Awaitable[object]]  # ServiceState.reload(task)


class PullFailedError(RuntimeError):
    """A required pull failed: start-up stops."""


@dataclass(frozen=True)
class PullOutcome:
    source: Source
    returncode: int
    last_lines: tuple[str, ...]  # the end of its output, for the error message

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        if self.returncode == EXIT_UNAVAILABLE:
            return (
                f"{self.source.spec}: focus pull is not available in this image (it needs torch "
                "and huggingface_hub: the train extra, or the cpu-pull image)"
            )
        errors = [line for line in self.last_lines if line.startswith("error:")]
        reason = errors[-1] if errors else " | ".join(self.last_lines[-3:])
        return f"{self.source.spec}: focus pull exited {self.returncode}: {reason}"


def pull_command(source: Source, repository: Path) -> list[str]:
    """The ``focus pull`` command line for ``source``, run with this interpreter."""
    argv = [sys.executable, "-m", "focus_cli", "--log-level", "warning", "pull", source.task]
    argv += ["--size", source.size]
    argv += ["--revision", source.revision, "--repository", str(repository)]
    if not source.released:
        argv += ["--from", f"{source.repo_id}/{source.filename}"]
    return argv


def missing(sources: tuple[Source, ...], repository: Path) -> list[Source]:
    """The sources whose task has no version pulled from that file yet."""
    try:
        versions = scan_versions(repository) if repository.is_dir() else {}
    except RepositoryError as exc:
        logger.warning("cannot read %s to see what is already pulled: %s", repository, exc)
        versions = {}
    todo = []
    for source in sources:
        entries = versions.get(source.task, [])
        found = pulled_from(((e.version, e.card) for e in entries), source)
        if found:
            version, card = found[-1]
            logger.info(
                "%s: version %d (%s) already pulled from %s/%s; not pulling again",
                source.task, version, card.version, source.repo_id, source.filename,
            )  # fmt: skip
        else:
            todo.append(source)
    return todo


class StartupPuller:
    """Runs the ``FOCUS_PULL`` entries: before start-up when required, else in the background."""

    def __init__(
        self,
        sources: tuple[Source, ...],
        repository: Path,
        *,
        require: bool = False,
        reload: Reload | None = None,
    ) -> None:
        self.sources = sources
        self.repository = Path(repository)
        self.require = require
        self.reload = reload
        self.outcomes: list[PullOutcome] = []
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def before_start(self) -> None:
        """With ``require``: every pull now; raise :class:`PullFailedError` on the first failure."""
        if not self.require:
            return
        for source in missing(self.sources, self.repository):
            outcome = await self._run(source)
            if not outcome.ok:
                raise PullFailedError(f"FOCUS_REQUIRE_PULL=true and {outcome.describe()}")

    def start(self) -> None:
        """Without ``require``: the pulls in the background (the service is already serving)."""
        if self.require or not self.sources:
            return
        todo = missing(self.sources, self.repository)
        if todo:
            self._task = asyncio.create_task(self._background(todo), name="focus-pull")

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Stop a pull in progress (it publishes nothing when interrupted)."""
        process = self._process
        if process is not None and process.returncode is None:
            logger.info("stopping the pull in progress (pid %d)", process.pid)
            process.terminate()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _background(self, todo: list[Source]) -> None:
        for source in todo:
            outcome = await self._run(source)
            if not outcome.ok:
                logger.error("%s; %s keeps the model it has", outcome.describe(), source.task)
                continue
            if self.reload is None:
                logger.warning(
                    "%s: pulled version published; this service cannot reload models while "
                    "running, so it serves it from the next start",
                    source.task,
                )
                continue
            try:
                await self.reload(source.task)
            except Exception:  # the service keeps what it serves; say why it did not switch
                logger.exception("%s: pulled version published but the reload failed", source.task)

    async def _run(self, source: Source) -> PullOutcome:
        argv = pull_command(source, self.repository)
        logger.info("%s: pulling %s (%s)", source.task, source.spec, " ".join(argv[5:]))
        env = {**_PROGRESS_ENV, **os.environ}
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
        self._process = process
        tail: list[str] = []
        assert process.stdout is not None
        pending = ""
        while chunk := await process.stdout.read(65536):
            *lines, pending = _LINES.split(pending + chunk.decode("utf-8", "replace"))
            for line in filter(None, (s.strip() for s in lines)):
                logger.info("pull %s: %s", source.task, line)
                tail = [*tail[-19:], line]
        if pending.strip():
            logger.info("pull %s: %s", source.task, pending.strip())
            tail.append(pending.strip())
        returncode = await process.wait()
        self._process = None
        outcome = PullOutcome(source, returncode, tuple(tail))
        self.outcomes.append(outcome)
        if outcome.ok:
            logger.info("%s: pull of %s done", source.task, source.spec)
        return outcome
