"""The response cache (FOCUS_CACHE_MB) and the per-request deadline (X-Focus-Timeout-Ms).

Served by the bundled demo camouflage model (model_repository/), in a temporary repository.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from service_testing import GatedBackend, image_bytes, metric_value, run, running

from service.app import create_app
from service.cache import CachedResponse, ResponseCache, cache_key
from service.metrics import Metrics
from service.settings import Settings
from service.state import default_backend_factory

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repository" / "camouflage"
PNG = {"content-type": "image/png"}

pytestmark = pytest.mark.skipif(
    not (DEMO / "model.onnx").is_file(), reason="no demo model in model_repository/"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "camouflage").mkdir()
    for name in ("focus.json", "model.onnx"):
        shutil.copy(DEMO / name, root / "camouflage" / name)
    return root


def _settings(repo: Path, **overrides: Any) -> Settings:
    return Settings(model_repository=repo, intra_op_threads=1, **overrides)


# ---------------------------------------------------------------------------------- cache


def test_cache_is_off_by_default(repo) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo))) as client:
            for _ in range(2):
                response = await client.post("/segment/cod", content=image_bytes(96, 128),
                                             headers=PNG)  # fmt: skip
                assert response.status_code == 200 and "X-Focus-Cache" not in response.headers
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "focus_cache_misses_total", task="camouflage") == 0
            assert metric_value(metrics, "focus_cache_hits_total", task="camouflage") == 0

    run(scenario())


def test_cache_answers_a_repeated_request_with_the_same_bytes(repo) -> None:
    png, other = image_bytes(96, 128, seed=1), image_bytes(96, 128, seed=2)

    async def scenario() -> dict[str, Any]:
        async with running(create_app(_settings(repo, cache_mb=1))) as client:
            out: dict[str, Any] = {}
            for name, url, body in (
                ("first", "/segment/cod", png),
                ("again", "/segment?task=camouflage", png),  # same task, same parameters
                ("threshold", "/segment/cod?threshold=0.5", png),
                ("threshold_again", "/segment/cod?threshold=0.5", png),
                ("other_image", "/segment/cod", other),
                ("json", "/segment/cod?format=json", png),
                ("json_again", "/segment/cod?format=json", png),
            ):
                out[name] = await client.post(url, content=body, headers=PNG)
            out["metrics"] = (await client.get("/metrics")).text
            return out

    out = run(scenario())
    cache = {k: v.headers.get("X-Focus-Cache") for k, v in out.items() if k != "metrics"}
    assert cache == {
        "first": "miss", "again": "hit", "threshold": "miss", "threshold_again": "hit",
        "other_image": "miss", "json": "miss", "json_again": "hit",
    }  # fmt: skip
    assert out["again"].content == out["first"].content
    assert out["threshold_again"].content == out["threshold"].content != out["first"].content
    assert out["other_image"].content != out["first"].content
    assert out["json_again"].json() == out["json"].json()
    assert out["json_again"].headers["content-type"] == "application/json"
    for name in ("again", "json_again"):  # a hit keeps the model headers
        assert out[name].headers["X-Focus-Model-Version"] == "1"
        assert out[name].headers["X-Focus-Task"] == "camouflage"
    metrics = out["metrics"]
    assert metric_value(metrics, "focus_cache_hits_total", task="camouflage") == 3
    assert metric_value(metrics, "focus_cache_misses_total", task="camouflage") == 4
    assert metric_value(metrics, "focus_cache_bytes") > len(out["first"].content)


def _entry(size: int) -> CachedResponse:
    return CachedResponse(b"x" * size, "image/png", ())


def test_cache_evicts_the_least_recently_used_by_bytes() -> None:
    metrics = Metrics()
    one = _entry(1000).size
    cache = ResponseCache(3 * one, metrics)
    for key in "abc":
        assert cache.put(key, _entry(1000))
    assert cache.get("a", "camouflage") is not None  # a is now the most recent
    assert cache.put("d", _entry(1000))  # evicts b, the least recently used
    assert [cache.get(k, "camouflage") is not None for k in "abcd"] == [True, False, True, True]
    assert cache.bytes == 3 * one and len(cache) == 3
    assert cache.put("big", _entry(2000))  # needs two entries' room: evicts c and a... in order
    assert [k for k in "abcd" if cache.get(k, "camouflage") is not None] == ["d"]
    assert cache.bytes == one + _entry(2000).size <= cache.max_bytes
    assert not cache.put("huge", _entry(4 * 1000))  # larger than the whole cache: not stored
    assert len(cache) == 2
    text = metrics.exposition()[0].decode()
    assert metric_value(text, "focus_cache_bytes") == cache.bytes


def test_cache_key_names_version_image_and_parameters() -> None:
    base = cache_key("camouflage", 1, "v1", b"img", [("format", "png")])
    assert base == cache_key("camouflage", 1, "v1", b"img", [("format", "png")])
    for other in (
        cache_key("salient", 1, "v1", b"img", [("format", "png")]),
        cache_key("camouflage", 2, "v1", b"img", [("format", "png")]),
        cache_key("camouflage", 1, "v2", b"img", [("format", "png")]),
        cache_key("camouflage", 1, "v1", b"img2", [("format", "png")]),
        cache_key("camouflage", 1, "v1", b"img", [("format", "json")]),
        cache_key("camouflage", 1, "v1", b"img", [("format", "png"), ("threshold", "0.5")]),
    ):
        assert other != base
    params = [("threshold", "0.5"), ("format", "png")]
    assert cache_key("c", 1, "v", b"i", params) == cache_key("c", 1, "v", b"i", params[::-1])


# ------------------------------------------------------------------------------- deadline


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "", "99999999999"])
def test_a_garbage_timeout_header_is_a_422(repo, value: str) -> None:
    async def scenario() -> Any:
        async with running(create_app(_settings(repo))) as client:
            return await client.post(
                "/segment/cod",
                content=image_bytes(96, 128),
                headers={**PNG, "X-Focus-Timeout-Ms": value},
            )

    response = run(scenario())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("header.X-Focus-Timeout-Ms: ")


def test_the_timeout_header_lowers_the_deadline(repo) -> None:
    """The backend is held: 150 ms from the header gives a 504 long before FOCUS_TIMEOUT_S."""
    made: list[GatedBackend] = []

    def factory(entry: Any, settings: Settings) -> Any:
        made.append(GatedBackend(default_backend_factory(entry, settings)))
        return made[-1]

    async def scenario() -> tuple[Any, float, Any]:
        app = create_app(_settings(repo, timeout_s=60), backend_factory=factory)
        async with running(app) as client:
            made[0].hold.clear()
            loop = asyncio.get_running_loop()
            started = loop.time()
            held = await client.post("/segment/cod", content=image_bytes(96, 128),
                                     headers={**PNG, "X-Focus-Timeout-Ms": "150"})  # fmt: skip
            elapsed = loop.time() - started
            made[0].hold.set()
            ok = await client.post("/segment/cod", content=image_bytes(96, 128),
                                   headers={**PNG, "X-Focus-Timeout-Ms": "600000"})  # fmt: skip
            return held, elapsed, ok

    held, elapsed, ok = run(scenario())
    assert held.status_code == 504
    assert held.json() == {"error": {"code": "timeout", "message": "no result within 0.15s"}}
    assert elapsed < 30  # the header's deadline, not the server's 60 s
    assert ok.status_code == 200  # a larger value than the server's is capped, not refused


def test_request_timeout_only_lowers_the_servers_deadline() -> None:
    from service.deps import request_timeout

    settings = Settings(timeout_s=2.0)
    assert request_timeout(settings, None) == 2.0
    assert request_timeout(settings, 500) == 0.5
    assert request_timeout(settings, 10_000) == 2.0
