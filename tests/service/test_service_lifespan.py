"""Lifespan start-up and clean-up, settings, and metrics registries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_testing import WrappedBackend, factory, image_bytes, run, running

from models.repository import RepositoryError
from service.app import create_app
from service.backends.base import BackendUnavailableError
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_lifespan_loads_warms_up_and_cleans_up(make_settings, model_repository) -> None:
    made: dict[str, Any] = {}
    settings = make_settings(model_repository=model_repository)
    app = create_app(settings, backend_factory=factory(WrappedBackend, made))
    state = app.state.focus
    assert (state.ready, state.models, made) == (False, {}, {})  # nothing happens at creation
    with TestClient(app) as client:
        assert state.ready
        assert sorted(made) == ["camouflage", "salient", "shadow"]
        assert all(b.batches == [1] for b in made.values())  # one warm-up inference each
        batchers = [m.batcher for m in state.models.values()]
        assert all(b.running for b in batchers)
        assert client.get("/health/ready").status_code == 200
    assert state.ready is False and state.models == {}
    assert all(b.closed for b in made.values())
    assert not any(b.running for b in batchers)


def test_startup_fails_on_an_empty_repository(tmp_path: Path) -> None:
    app = create_app(Settings(model_repository=tmp_path))
    with pytest.raises(RepositoryError, match="no models in"), TestClient(app):
        pass


def test_startup_fails_when_a_gpu_is_required_but_missing(make_settings) -> None:
    app = create_app(make_settings(device="cuda", require_gpu=True))
    with pytest.raises(BackendUnavailableError, match="FOCUS_REQUIRE_GPU=true"), TestClient(app):
        pass


def test_settings_read_focus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "FOCUS_MODEL_REPOSITORY": "/models",
        "FOCUS_BACKEND": "onnxruntime",
        "FOCUS_MAX_BATCH_SIZE": "3",
        "FOCUS_MAX_DELAY_MS": "2.5",
        "FOCUS_API_KEY": "s3cret-key",
        "FOCUS_REQUIRE_GPU": "false",
        "FOCUS_WORKERS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (str(s.model_repository), s.backend, s.max_batch_size, s.max_delay_s) == (
        "/models", "onnxruntime", 3, 0.0025,
    )  # fmt: skip
    assert s.api_key_value() == "s3cret-key" and "s3cret" not in repr(s)  # never printed
    assert s.workers == 2


def test_settings_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FOCUS_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.model_dump() == {
        "model_repository": Path("model_repository"),
        "backend": "auto",
        "device": "cpu",
        "require_gpu": False,
        "host": "0.0.0.0",
        "port": 8000,
        "max_batch_size": 8,
        "max_delay_ms": 10.0,
        "max_queue": 64,
        "timeout_s": 30.0,
        "max_body_bytes": 20 * 1024 * 1024,
        "max_pixels": 40_000_000,
        "api_key": None,
        "engine_cache": Path("/var/cache/focus/engines"),
        "intra_op_threads": 0,
        "log_level": "info",
        "workers": 1,
        "pull": None,
        "require_pull": False,
        "max_inflight_per_task": 64,
        "max_inflight_pixels": 40_000_000,
        "read_timeout_s": 30.0,
        "drain_delay_s": 5.0,
        "model_versions": None,
        "admin_key": None,
        "repository_poll_s": 0.0,
        "cache_mb": 0.0,
        "precision": "auto",
        "force_ungated": False,
        "openvino_cache": Path("/var/cache/focus/openvino"),
        "auto_timed_runs": 3,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend": "tensorrt"}, "FOCUS_BACKEND=tensorrt needs FOCUS_DEVICE=cuda"),
        ({"require_gpu": True}, "FOCUS_REQUIRE_GPU=true needs FOCUS_DEVICE=cuda"),
        ({"precision": "fp16"}, "FOCUS_PRECISION=fp16 needs FOCUS_DEVICE=cuda"),
        ({"backend": "openvino", "device": "cuda"}, "FOCUS_BACKEND=openvino runs on the CPU"),
        (
            {"backend": "tflite"},
            "Input should be 'auto', 'onnxruntime', 'openvino', 'tensorrt' or 'torch'",
        ),
        ({"max_batch_size": 0}, "Input should be greater than or equal to 1"),
        ({"timeout_s": 0}, "Input should be greater than 0"),
        ({"log_level": "loud"}, "Input should be 'critical', 'error', 'warning', 'info'"),
        (
            {"max_inflight_pixels": 1000, "max_pixels": 2000},
            r"FOCUS_MAX_INFLIGHT_PIXELS \(1000\) must be at least FOCUS_MAX_PIXELS \(2000\)",
        ),
    ],
)
def test_settings_reject_invalid_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)


def test_each_app_has_its_own_metrics_registry(make_settings) -> None:
    png = image_bytes(60, 80)
    first, second = create_app(make_settings()), create_app(make_settings())
    with TestClient(first) as a, TestClient(second) as b:
        a.post("/segment/cod", content=png, headers={"content-type": "image/png"})
        line = 'focus_requests_total{code="200",task="camouflage"}'
        assert f"{line} 1.0" in a.get("/metrics").text
        assert line not in b.get("/metrics").text


def test_multiprocess_metrics_mode_aggregates_worker_files(model_repository, tmp_path) -> None:
    """Two worker processes share PROMETHEUS_MULTIPROC_DIR: the second one's /metrics counts
    the first one's request too (as gunicorn-style workers behind one scrape target do)."""
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    code = textwrap.dedent(
        f"""
        from fastapi.testclient import TestClient
        from service.app import create_app
        from service.settings import Settings

        app = create_app(Settings(model_repository={str(model_repository)!r},
                                  intra_op_threads=1))
        with TestClient(app) as client:
            data = open({str(tmp_path / "i.png")!r}, "rb").read()
            r = client.post("/segment/sod", content=data, headers={{"content-type": "image/png"}})
            assert r.status_code == 200
            print(client.get("/metrics").text)
        """
    )
    (tmp_path / "i.png").write_bytes(image_bytes(60, 80))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    outputs, pids = [], []
    for _ in range(2):  # one after the other: two processes, two sets of files
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(out.splitlines())
        pids.append(proc.pid)
    line = 'focus_requests_total{{code="200",task="salient"}} {}'
    assert line.format("1.0") in outputs[0]
    assert line.format("2.0") in outputs[1]  # the first process's request is aggregated
    written = {f.stem.rsplit("_", 1)[-1] for f in metrics_dir.glob("counter_*.db")}
    assert {str(pid) for pid in pids} <= written


def test_ready_reports_a_stopped_batcher(make_settings) -> None:
    async def scenario():
        app = create_app(make_settings())
        async with running(app) as client:
            owner = app.state.focus.models["camouflage"].batcher.executor.tasks[1]
            owner.cancel()  # the device executor's runner died
            with contextlib.suppress(asyncio.CancelledError):
                await owner
            return await client.get("/health/ready")

    response = run(scenario())
    assert response.status_code == 503
    assert response.json() == {
        "error": {"code": "not_ready", "message": "batcher stopped for camouflage"}
    }
