"""A real ``focus serve`` process: graceful drain under a burst, and the memory bound (slow).

Both scenarios are the benchmark scripts' own (``benchmarks/drain.py``,
``benchmarks/memory_bound.py``), run small here and asserted; the scripts print the numbers
recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


@pytest.mark.slow
def test_sigterm_under_a_burst_loses_nothing_and_reports_the_drain(bench, model_repository):
    drain = bench("drain")
    r = drain.measure(
        model_repository,
        burst=16,
        drain_delay_s=2.0,
        timeout_s=20.0,
        tasks=("camouflage", "salient", "shadow"),
    )
    assert r.burst_codes == {"200": 16}, r.stderr[-3000:]  # 0 in-flight requests lost
    assert r.first_ready_503_s is not None and r.first_ready_503_s < 1.0
    assert set(r.ready_codes_during_delay) == {"503"}  # ready said so at once, and throughout
    assert r.served_during_delay >= 1  # while the listener stayed open, requests were served
    assert r.listener_closed_s is not None and r.listener_closed_s >= 2.0
    assert r.returncode == 0
    assert r.exit_s <= r.bound_s  # drain delay + one FOCUS_TIMEOUT_S
    assert "Traceback" not in r.stderr
    assert "draining" in r.stderr and "Application shutdown complete." in r.stderr


@pytest.mark.slow
def test_peak_memory_of_twelve_concurrent_40mp_images_is_bounded(bench, single_task_repository):
    """Bound: peak RSS <= idle + 40 bytes x FOCUS_MAX_INFLIGHT_PIXELS (measured: ~30)."""
    memory = bench("memory_bound")
    budget = 40_000_000
    r = memory.measure(single_task_repository, concurrency=12, megapixels=40, budget_pixels=budget)
    assert r.codes["200"] >= 1
    assert r.codes["200"] + r.codes["503"] == 12  # the rest refused at once, not queued
    assert r.peak_rss_mib <= r.idle_rss_mib + 40 * budget / 2**20, (r.idle_rss_mib, r.peak_rss_mib)
