"""The Dockerfile's `cpu` target, built from this checkout and run with podman (issue 14).

One container serves the bundled model repository, as `docker run` would, with the root
filesystem read-only; the tests talk to it over loopback through the published port. The last
test stops it with SIGTERM. Readiness is bounded by the image's own HEALTHCHECK start period:
an orchestrator using that health check would give up on a slower start.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from container_testing import ROOT, Podman, Report, container, free_port, inspect, wait_for
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

TASK = "camouflage"
UID = 10001
# Short bounds for the drain test; the bound is computed from the service's own settings.
DRAIN_ENV = {"FOCUS_TIMEOUT_S": "10", "FOCUS_DRAIN_DELAY_S": "1"}


@dataclass(frozen=True)
class Served:
    name: str
    url: str
    ready_s: float
    ready_bound_s: float


def _healthcheck(podman: Podman, image: str) -> dict:
    config = inspect(podman, image)
    check = config.get("Healthcheck") or config.get("Config", {}).get("Healthcheck")
    assert check, "the image has no HEALTHCHECK (built in OCI format?)"
    return check


@pytest.fixture(scope="module")
def served(podman: Podman, cpu_image: str, report: Report) -> Iterator[Served]:
    start_period_s = _healthcheck(podman, cpu_image)["StartPeriod"] / 1e9
    port = free_port()
    env = [f"--env={k}={v}" for k, v in DRAIN_ENV.items()]
    started = time.monotonic()
    with container(
        podman, "--read-only", f"--publish=127.0.0.1:{port}:8000", *env, cpu_image
    ) as name:
        url = f"http://127.0.0.1:{port}"
        ready_s = wait_for(
            lambda: httpx.get(f"{url}/health/ready", timeout=2).status_code == 200,
            start_period_s,
            f"GET {url}/health/ready == 200",
            lambda: podman.run("logs", name, check=False).stderr[-4000:],
        )
        ready_s = time.monotonic() - started
        report.add("cold start to ready (podman run -> 200)", f"{ready_s:.1f} s")
        yield Served(name, url, ready_s, start_period_s)


def test_ready_within_the_healthcheck_start_period(served: Served) -> None:
    assert served.ready_s <= served.ready_bound_s
    response = httpx.get(f"{served.url}/tasks", timeout=10)
    assert response.status_code == 200
    bundled = sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/focus.json"))
    assert all(task in response.text for task in bundled), response.text


def _host_mask(image: Path, out: Path) -> np.ndarray:
    """`focus segment` on the host, on the same bundled model and the same file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOCUS_")}
    command = [
        sys.executable, "-m", "focus_cli", "segment", "--task", TASK, "--input", str(image),
        "--output", str(out), "--backend", "onnxruntime", "--device", "cpu",
        "--model-repository", str(ROOT / "model_repository"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (mask,) = out.glob("*.png")
    return np.asarray(Image.open(mask))


@pytest.mark.parametrize("name", ["scene.png", "scene.jpg"])
def test_segment_matches_focus_segment_on_the_host(
    served: Served, photos: dict[str, Path], name: str, tmp_path: Path
) -> None:
    path = photos[name]
    mime = "image/png" if name.endswith(".png") else "image/jpeg"
    response = httpx.post(
        f"{served.url}/segment",
        params={"task": TASK},
        files={"image": (name, path.read_bytes(), mime)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    served_mask = np.asarray(Image.open(io.BytesIO(response.content)))
    host_mask = _host_mask(path, tmp_path)
    assert served_mask.shape == host_mask.shape == Image.open(path).size[::-1]
    assert served_mask.dtype == host_mask.dtype == np.uint8
    assert 0 < served_mask.std(), "a constant mask says nothing"
    differing = int((served_mask != host_mask).sum())
    assert differing == 0, (
        f"{differing} pixels differ (max {np.abs(served_mask.astype(int) - host_mask).max()})"
    )


def test_metrics_expose_the_focus_families(served: Served) -> None:
    """Every family the service's Metrics registers (this checkout's service/metrics.py)."""
    from service.metrics import Metrics

    expected = {family.name for family in Metrics().registry.collect()}
    assert {"focus_requests", "focus_request_duration_seconds", "focus_model_info"} <= expected
    text = httpx.get(f"{served.url}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    missing = sorted(expected - set(families))
    assert not missing, f"/metrics lacks {missing}"
    tasks = {s.labels.get("task") for s in families["focus_requests"].samples}
    assert TASK in tasks, "the segment requests above are counted"
    models = {s.labels.get("task") for s in families["focus_model_info"].samples}
    assert TASK in models


def test_serves_as_uid_10001_on_a_read_only_root(podman: Podman, served: Served) -> None:
    status = podman.run("exec", served.name, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(.*)$", status, flags=re.MULTILINE).group(1).split()
    assert uids == [str(UID)] * 4
    cmdline = podman.run("exec", served.name, "cat", "/proc/1/cmdline").stdout
    assert "focus" in cmdline and "serve" in cmdline, cmdline
    assert inspect(podman, served.name)["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/app/x", "/opt/venv/x", "/app/model_repository/x"):
        write = podman.run("exec", served.name, "touch", path, check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, path


def test_healthcheck_command_succeeds_inside(podman: Podman, served: Served) -> None:
    assert podman.run("healthcheck", "run", served.name, check=False).returncode == 0
    # the same script against a port nothing listens on fails: the check is not a constant
    broken = podman.run(
        "exec", "--env=FOCUS_PORT=1", served.name,
        "python", "/usr/local/lib/focus/healthcheck.py", check=False,
    )  # fmt: skip
    assert broken.returncode == 1, broken.stderr


def test_image_has_no_torch_and_report_its_size(
    podman: Podman, cpu_image: str, base_image: str, report: Report
) -> None:
    probe = podman.run(
        "run", "--rm", "--entrypoint=python", cpu_image, "-c",
        "import importlib.util as u, onnxruntime; print(u.find_spec('torch') is None)",
    )  # fmt: skip
    assert probe.stdout.strip() == "True"
    listing = podman.run(
        "run", "--rm", "--entrypoint=sh", cpu_image, "-c",
        "ls /opt/venv/lib/python3*/site-packages",
    ).stdout.split()  # fmt: skip
    assert "onnxruntime" in listing and not [p for p in listing if p.startswith("torch")]
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", cpu_image).stdout)
    base = int(podman.run("image", "inspect", "--format", "{{.Size}}", base_image).stdout)
    assert base < size < 2_000_000_000, "the service-only image should stay well under 2 GB"


def _send_partial_request(url: str, body: bytes) -> tuple[socket.socket, bytes]:
    """Open a connection and send the headers and half the body of a /segment request."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST /segment/{TASK} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    half = len(body) // 2
    sock.sendall(head + body[:half])
    return sock, body[half:]


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _drain_bound_s() -> float:
    """What the service allows itself to drain, from its settings, plus 5 s to exit."""
    from service.settings import Settings

    old = {k: os.environ.get(k) for k in DRAIN_ENV}
    os.environ.update(DRAIN_ENV)
    try:
        settings = Settings()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return float(getattr(settings, "drain_delay_s", 0.0)) + settings.timeout_s + 1 + 5


def test_sigterm_drains_an_inflight_request_and_exits_in_bound(
    podman: Podman, served: Served, photos: dict[str, Path], report: Report
) -> None:
    """`podman stop` while a request's body is half sent: it still gets its mask, then exit 0."""
    bound = _drain_bound_s()
    sock, rest = _send_partial_request(served.url, photos["scene.jpg"].read_bytes())
    time.sleep(0.5)  # the server has read the headers: the request is in flight
    stopped: dict[str, float] = {}

    def stop() -> None:
        started = time.monotonic()
        podman.run("stop", f"--time={int(bound) + 30}", served.name, timeout=bound + 60)
        stopped["s"] = time.monotonic() - started

    stopper = threading.Thread(target=stop)
    stopper.start()
    time.sleep(1.5)  # SIGTERM delivered; the service is draining
    sock.sendall(rest)
    status, body = _read_response(sock)
    sock.close()
    stopper.join(bound + 90)
    state = inspect(podman, served.name)["State"]
    logs = podman.run("logs", served.name, check=False).stderr
    assert status == 200, body[:500]
    assert Image.open(io.BytesIO(body)).size == Image.open(photos["scene.jpg"]).size
    # exit code 0: the service handled SIGTERM itself (podman's SIGKILL after --time gives 137)
    assert state["Status"] == "exited" and state["ExitCode"] == 0, (state, logs[-3000:])
    assert stopped["s"] <= bound, f"stopped after {stopped['s']:.1f} s > {bound:.1f} s"
    report.add("SIGTERM to exit (one request in flight)", f"{stopped['s']:.1f} s (bound {bound} s)")
