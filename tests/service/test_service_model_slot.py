"""ModelSlot alone (service/model_slot.py): binding, the switch, the drain, failures.

The slot is generic over what it serves; these tests give it plain records and record every
load and unload, so the ordering guarantees are checked without timing luck. The same slot
serving the real demo models under a burst is in test_service_lifecycle.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from models.config import ModelCard
from models.repository import ModelEntry
from service.model_slot import ModelSlot, ReloadOutcome

DEMO = Path(__file__).resolve().parents[2] / "model_repository" / "camouflage"


@dataclass
class Model:
    entry: ModelEntry
    released: bool = False


@dataclass
class Recorder:
    events: list[str] = field(default_factory=list)
    fail: dict[int, Exception] = field(default_factory=dict)
    load_gate: asyncio.Event | None = None

    async def load(self, entry: ModelEntry) -> Model:
        self.events.append(f"load {entry.version}")
        if self.load_gate is not None:
            await self.load_gate.wait()
        if entry.version in self.fail:
            raise self.fail[entry.version]
        return Model(entry)

    async def unload(self, model: Model) -> None:
        self.events.append(f"unload {model.entry.version}")
        model.released = True


def _entry(version: int) -> ModelEntry:
    card = ModelCard.load(DEMO)
    return ModelEntry("camouflage", version, DEMO.parent / str(version), card, ("model.onnx",))


def _slot(recorder: Recorder, drain_timeout_s: float = 5.0) -> ModelSlot[Model]:
    return ModelSlot(
        "camouflage",
        Model(_entry(1)),
        load=recorder.load,
        unload=recorder.unload,
        drain_timeout_s=drain_timeout_s,
    )


pytestmark = pytest.mark.skipif(not (DEMO / "focus.json").is_file(), reason="no demo model")


def test_a_bound_request_keeps_its_version_and_the_old_one_is_released_after_it() -> None:
    async def scenario() -> tuple[Recorder, list[int], ReloadOutcome]:
        recorder = Recorder()
        slot = _slot(recorder)
        seen: list[int] = []
        leave = asyncio.Event()

        async def request() -> None:
            async with slot.bind() as model:
                await leave.wait()
                seen.append(model.entry.version)
                assert not model.released  # still usable while bound
                recorder.events.append("request done")

        bound = asyncio.create_task(request())
        await asyncio.sleep(0)
        switch = asyncio.create_task(slot.switch_to(_entry(2)))
        while slot.version != 2:  # swapped, but waiting for the bound request
            await asyncio.sleep(0.01)
        async with slot.bind() as model:
            seen.append(model.entry.version)  # a new request gets the new version at once
        assert not switch.done()
        leave.set()
        await bound
        return recorder, seen, await switch

    recorder, seen, outcome = asyncio.run(scenario())
    assert seen == [2, 1]
    assert recorder.events == ["load 2", "request done", "unload 1"]
    assert outcome == ReloadOutcome("camouflage", "loaded", 2, 2, 1)


def test_the_old_version_serves_while_the_new_one_loads() -> None:
    async def scenario() -> list[int]:
        recorder = Recorder(load_gate=asyncio.Event())
        slot = _slot(recorder)
        switch = asyncio.create_task(slot.switch_to(_entry(2)))
        while slot.staging is None:
            await asyncio.sleep(0.01)
        versions = []
        async with slot.bind() as model:
            versions.append(model.entry.version)
        assert slot.staging.version == 2
        recorder.load_gate.set()
        await switch
        async with slot.bind() as model:
            versions.append(model.entry.version)
        assert slot.staging is None
        return versions

    assert asyncio.run(scenario()) == [1, 2]


def test_a_failed_load_keeps_the_old_version_and_says_why() -> None:
    async def scenario() -> tuple[Recorder, ModelSlot[Model], ReloadOutcome]:
        recorder = Recorder(fail={2: RuntimeError("bad graph\nmore detail")})
        slot = _slot(recorder)
        return recorder, slot, await slot.switch_to(_entry(2))

    recorder, slot, outcome = asyncio.run(scenario())
    assert outcome == ReloadOutcome(
        "camouflage", "failed", 2, 1, 1, error="RuntimeError: bad graph"
    )
    assert outcome.describe() == (
        "camouflage: version 2 not served (RuntimeError: bad graph); still serving version 1"
    )
    assert slot.version == 1 and not slot.active.released
    assert slot.failed == {2: "RuntimeError: bad graph"}
    assert recorder.events == ["load 2"]


def test_switching_to_the_served_version_changes_nothing() -> None:
    recorder = Recorder()
    slot = _slot(recorder)
    outcome = asyncio.run(slot.switch_to(_entry(1)))
    assert outcome == ReloadOutcome("camouflage", "unchanged", 1, 1, 1)
    assert recorder.events == []


def test_a_drain_that_times_out_releases_the_old_version_anyway() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        slot = _slot(recorder, drain_timeout_s=0.05)
        stuck = asyncio.Event()

        async def request() -> None:
            async with slot.bind():
                await stuck.wait()

        bound = asyncio.create_task(request())
        await asyncio.sleep(0)
        await slot.switch_to(_entry(2))
        assert recorder.events == ["load 2", "unload 1"]
        stuck.set()
        await bound
        return recorder

    asyncio.run(scenario())


def test_close_waits_for_a_switch_and_then_refuses_more() -> None:
    async def scenario() -> tuple[Recorder, ReloadOutcome]:
        recorder = Recorder(load_gate=asyncio.Event())
        slot = _slot(recorder)
        switch = asyncio.create_task(slot.switch_to(_entry(2)))
        while slot.staging is None:
            await asyncio.sleep(0.01)
        close = asyncio.create_task(slot.close())
        await asyncio.sleep(0.01)
        recorder.load_gate.set()
        await switch
        await close
        return recorder, await slot.switch_to(_entry(3))

    recorder, late = asyncio.run(scenario())
    assert recorder.events == ["load 2", "unload 1", "unload 2"]
    assert late.status == "failed" and late.error == "the service is shutting down"
