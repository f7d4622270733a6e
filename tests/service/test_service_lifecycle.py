"""Model versions, hot reload, per-task readiness (service/model_slot.py, routes/admin.py).

The models are the bundled demo models (model_repository/): camouflage's is version 1, and
salient's network relabelled as camouflage is version 2, so the two versions give different
masks for the same image and a response's mask shows which version really computed it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from service_testing import WrappedBackend, image_bytes, metric_value, run, running

from models.repository import publish_version
from service.app import create_app
from service.settings import Settings
from service.state import default_backend_factory

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repository"
ADMIN = "admin-s3cret"
PNG = {"content-type": "image/png"}

pytestmark = pytest.mark.skipif(
    not (DEMO / "camouflage" / "model.onnx").is_file(), reason="no demo models in model_repository/"
)


def _relabel(source: Path, target: Path, task: str, version: str) -> Path:
    """A copy of a demo model directory that serves as ``task`` (its network unchanged)."""
    import onnx

    target.mkdir(parents=True)
    card = json.loads((source / "focus.json").read_text())
    card.update(task=task, version=version)
    (target / "focus.json").write_text(json.dumps(card, indent=2))
    proto = onnx.load(str(source / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "focus.json":
            entry.value = json.dumps(card)
    onnx.save(proto, str(target / "model.onnx"))
    return target


@pytest.fixture(scope="module")
def salient_as_camouflage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """salient's demo network published as a camouflage model (focus.json version "v2")."""
    root = tmp_path_factory.mktemp("relabelled")
    return _relabel(DEMO / "salient", root / "model", "camouflage", "v2")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """camouflage/1 (the demo camouflage model) and salient (flat: version 1)."""
    root = tmp_path / "repo"
    (root / "camouflage").mkdir(parents=True)
    for name in ("focus.json", "model.onnx"):
        (root / "camouflage" / "1").mkdir(exist_ok=True)
        shutil.copy(DEMO / "camouflage" / name, root / "camouflage" / "1" / name)
        (root / "salient").mkdir(exist_ok=True)
        shutil.copy(DEMO / "salient" / name, root / "salient" / name)
    return root


def _settings(repo: Path, **overrides: Any) -> Settings:
    overrides.setdefault("intra_op_threads", 1)
    return Settings(model_repository=repo, **overrides)


def _admin(key: str = ADMIN) -> dict[str, str]:
    return {"X-Admin-Key": key}


async def _segment(client: Any, png: bytes, task: str = "camouflage") -> Any:
    return await client.post(f"/segment/{task}", content=png, headers=PNG)


# --------------------------------------------------------------------------- versions served


def test_the_highest_version_is_served_and_named_everywhere(repo, salient_as_camouflage) -> None:
    publish_version(repo, salient_as_camouflage)  # camouflage/2

    async def scenario() -> None:
        async with running(create_app(_settings(repo))) as client:
            tasks = {t["name"]: t["model"] for t in (await client.get("/tasks")).json()["tasks"]}
            assert tasks["camouflage"]["repository_version"] == 2
            assert tasks["camouflage"]["version"] == "v2"  # focus.json's own version string
            assert tasks["salient"]["repository_version"] == 1  # the flat layout
            response = await _segment(client, image_bytes(96, 128))
            assert response.status_code == 200
            assert response.headers["X-Focus-Model-Version"] == "2"
            body = (await client.post("/segment/cod?format=json", content=image_bytes(96, 128),
                                      headers=PNG)).json()  # fmt: skip
            assert body["model"]["repository_version"] == 2 and body["model"]["version"] == "v2"
            ready = await client.get("/health/ready/cod")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready", "task": "camouflage", "repository_version": 2,
                "staging_version": None,
            }  # fmt: skip
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "focus_model_info", task="camouflage",
                                repository_version="2", version="v2") == 1  # fmt: skip

    run(scenario())


def test_a_pinned_version_is_served_instead_of_the_highest(repo, salient_as_camouflage) -> None:
    publish_version(repo, salient_as_camouflage)

    async def scenario() -> None:
        app = create_app(_settings(repo, model_versions="cod:1"))
        async with running(app) as client:
            response = await _segment(client, image_bytes(96, 128))
            assert response.headers["X-Focus-Model-Version"] == "1"
            ready = (await client.get("/health/ready/camouflage")).json()
            assert ready["repository_version"] == 1

    run(scenario())


def test_startup_fails_when_a_pinned_version_is_missing(repo) -> None:
    from models.repository import RepositoryError

    async def scenario() -> None:
        async with running(create_app(_settings(repo, model_versions="camouflage:7"))):
            pass

    message = r"camouflage: pinned version 7 is not in .* \(has 1\)"
    with pytest.raises(RepositoryError, match=message):
        run(scenario())


def test_ready_for_a_task_without_a_model_is_404(repo) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo))) as client:
            response = await client.get("/health/ready/shadow")
            assert response.status_code == 404
            assert response.json() == {"error": {
                "code": "unknown_task",
                "message": "no model for task 'shadow'; available: camouflage, salient",
            }}  # fmt: skip
            assert (await client.get("/health/ready/nope")).status_code == 404

    run(scenario())


# ----------------------------------------------------------------------------- admin access


def test_admin_reload_is_off_unless_a_key_is_set(repo) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo))) as client:
            response = await client.post("/admin/reload", headers=_admin())
            assert response.status_code == 403
            assert response.json() == {"error": {
                "code": "forbidden",
                "message": "the admin API is off; set FOCUS_ADMIN_KEY to enable it",
            }}  # fmt: skip

    run(scenario())


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Key": "wrong"}, {"X-API-Key": ADMIN}])
def test_admin_reload_needs_the_admin_key(repo, headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo, admin_key=ADMIN))) as client:
            response = await client.post("/admin/reload", headers=headers)
            assert response.status_code == 401
            assert response.json() == {"error": {
                "code": "unauthorized", "message": "missing or invalid X-Admin-Key header",
            }}  # fmt: skip

    run(scenario())


# ------------------------------------------------------------------------------ hot reload


def test_reload_under_a_running_burst_drops_nothing(repo, salient_as_camouflage) -> None:
    """Four clients segment without pause while version 2 is published and reloaded."""
    png = image_bytes(96, 128, seed=3)
    results: list[tuple[float, str, bytes]] = []  # (sent at, version header, mask)
    failures: list[str] = []

    async def client_loop(client: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = time.perf_counter()
            response = await _segment(client, png)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
            else:
                results.append((sent, response.headers["X-Focus-Model-Version"], response.content))

    async def scenario() -> tuple[float, float, dict[str, Any], str]:
        app = create_app(_settings(repo, admin_key=ADMIN, max_delay_ms=2))
        async with running(app) as client:
            stop = asyncio.Event()
            burst = [asyncio.create_task(client_loop(client, stop)) for _ in range(4)]
            while len(results) < 8 and not failures:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(publish_version, repo, salient_as_camouflage)
            asked = time.perf_counter()
            reload = await client.post("/admin/reload", headers=_admin())
            switched = time.perf_counter()
            count = len(results)
            while len(results) < count + 8 and not failures:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*burst)
            assert reload.status_code == 200, reload.text
            return asked, switched, reload.json(), (await client.get("/metrics")).text

    asked, switched, body, metrics = run(scenario())
    assert failures == []
    assert body == {"tasks": [
        {"task": "camouflage", "status": "loaded", "requested": 2, "serving": 2, "previous": 1,
         "error": None},
        {"task": "salient", "status": "unchanged", "requested": 1, "serving": 1, "previous": 1,
         "error": None},
    ]}  # fmt: skip
    assert {version for _, version, _ in results} == {"1", "2"}
    assert all(version == "1" for sent, version, _ in results if sent < asked)
    assert all(version == "2" for sent, version, _ in results if sent > switched)
    masks = {version: {mask for _, v, mask in results if v == version} for version in "12"}
    assert len(masks["1"]) == len(masks["2"]) == 1  # each version answers deterministically
    assert masks["1"] != masks["2"]  # and version 2 really is another network
    # the old version is released: its model_info series is gone, the reload counted
    assert metric_value(metrics, "focus_model_info", task="camouflage", repository_version="1") == 0
    assert metric_value(metrics, "focus_model_info", task="camouflage", repository_version="2") == 1
    assert metric_value(metrics, "focus_model_reloads_total", task="camouflage",
                        outcome="loaded") == 1  # fmt: skip


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(repo) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo, admin_key=ADMIN))) as client:
            broken = repo / "camouflage" / "2"
            broken.mkdir()
            shutil.copy(DEMO / "camouflage" / "focus.json", broken / "focus.json")
            (broken / "model.onnx").write_bytes(b"not an onnx graph")
            response = await client.post("/admin/reload?task=cod", headers=_admin())
            assert response.status_code == 422
            error = response.json()["error"]
            assert error["code"] == "reload_failed"
            assert error["message"].startswith("camouflage: version 2 not served (")
            assert error["message"].endswith("); still serving version 1")
            ok = await _segment(client, image_bytes(96, 128))
            assert ok.status_code == 200 and ok.headers["X-Focus-Model-Version"] == "1"
            assert (await client.get("/health/ready/cod")).json()["repository_version"] == 1
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "focus_model_reloads_total", task="camouflage",
                                outcome="failed") == 1  # fmt: skip

    run(scenario())


class _WarmUpFails(WrappedBackend):
    def infer(self, image: Any, edges: Any) -> Any:
        raise RuntimeError("device lost during warm-up")


def test_a_version_that_fails_to_warm_up_leaves_the_old_one_serving(
    repo, salient_as_camouflage
) -> None:
    closed: list[_WarmUpFails] = []

    def factory(entry: Any, settings: Settings) -> Any:
        backend = default_backend_factory(entry, settings)
        if entry.version == 2:
            closed.append(_WarmUpFails(backend))
            return closed[-1]
        return backend

    async def scenario() -> None:
        app = create_app(_settings(repo, admin_key=ADMIN), backend_factory=factory)
        async with running(app) as client:
            publish_version(repo, salient_as_camouflage)
            response = await client.post("/admin/reload", headers=_admin())
            assert response.status_code == 422
            assert response.json()["error"]["message"] == (
                "camouflage: version 2 not served (RuntimeError: device lost during warm-up); "
                "still serving version 1"
            )
            ok = await _segment(client, image_bytes(96, 128))
            assert ok.status_code == 200 and ok.headers["X-Focus-Model-Version"] == "1"

    run(scenario())
    assert len(closed) == 1 and closed[0].closed  # the failed version's backend was released


def test_reload_with_a_version_pins_it_until_the_next_pin(repo, salient_as_camouflage) -> None:
    publish_version(repo, salient_as_camouflage)

    async def scenario() -> None:
        async with running(create_app(_settings(repo, admin_key=ADMIN))) as client:
            png = image_bytes(96, 128)
            assert (await _segment(client, png)).headers["X-Focus-Model-Version"] == "2"
            back = await client.post("/admin/reload?task=cod&version=1", headers=_admin())
            assert back.json()["tasks"] == [
                {"task": "camouflage", "status": "loaded", "requested": 1, "serving": 1,
                 "previous": 2, "error": None},
            ]  # fmt: skip
            again = await client.post("/admin/reload", headers=_admin())  # keeps the pin
            assert again.json()["tasks"][0]["status"] == "unchanged"
            assert (await _segment(client, png)).headers["X-Focus-Model-Version"] == "1"
            missing = await client.post("/admin/reload?task=cod&version=9", headers=_admin())
            assert missing.status_code == 422
            assert missing.json()["error"]["message"] == (
                "camouflage: version 9 not served (pinned version 9 is not in the repository "
                "(has 1, 2)); still serving version 1"
            )
            bad = await client.post("/admin/reload?version=1", headers=_admin())
            assert bad.status_code == 422
            assert bad.json()["error"]["message"] == "query.version: needs query.task"

    run(scenario())


def test_reload_serves_a_task_that_appears_in_the_repository(repo) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo, admin_key=ADMIN))) as client:
            assert (await _segment(client, image_bytes(96, 128), "shadow")).status_code == 404
            shutil.copytree(DEMO / "shadow", repo / "shadow")
            response = await client.post("/admin/reload", headers=_admin())
            assert response.json()["tasks"][2] == {  # camouflage, salient, shadow
                "task": "shadow", "status": "loaded", "requested": 1, "serving": 1,
                "previous": None, "error": None,
            }  # fmt: skip
            assert (await _segment(client, image_bytes(96, 128), "sd")).status_code == 200

    run(scenario())


def test_polling_switches_to_a_published_version(repo, salient_as_camouflage) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo, repository_poll_s=0.2))) as client:
            png = image_bytes(96, 128)
            assert (await _segment(client, png)).headers["X-Focus-Model-Version"] == "1"
            await asyncio.to_thread(publish_version, repo, salient_as_camouflage)
            deadline = time.monotonic() + 60
            while (await client.get("/health/ready/cod")).json()["repository_version"] != 2:
                assert time.monotonic() < deadline, "the poll never switched to version 2"
                await asyncio.sleep(0.1)
            assert (await _segment(client, png)).headers["X-Focus-Model-Version"] == "2"

    run(scenario())


def test_a_task_whose_directory_disappears_keeps_serving(repo) -> None:
    async def scenario() -> None:
        async with running(create_app(_settings(repo, admin_key=ADMIN))) as client:
            shutil.rmtree(repo / "salient")
            response = await client.post("/admin/reload", headers=_admin())
            assert [t["task"] for t in response.json()["tasks"]] == ["camouflage"]
            ok = await _segment(client, image_bytes(96, 128), "salient")
            assert ok.status_code == 200 and ok.headers["X-Focus-Model-Version"] == "1"
            gone = await client.post("/admin/reload?task=salient", headers=_admin())
            assert gone.status_code == 422
            assert gone.json()["error"]["message"].startswith(
                "reload failed: no model for task 'salient' in "
            )

    run(scenario())
