"""``focus serve``'s uvicorn against real sockets: read timeouts, client aborts, promtool.

The server is ``service.server.DrainingServer`` with ``focus serve``'s configuration
(``uvicorn_config``), in a thread on 127.0.0.1; clients are raw sockets, so a slow or vanishing
client is really slow or really gone.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from service_testing import free_port, image_bytes, metric_value

from service.app import create_app
from service.server import DrainingServer, uvicorn_config

TIMEOUT = 1.0


@contextlib.contextmanager
def serving(make_settings, **overrides) -> Iterator[tuple[str, int]]:
    port = free_port()
    settings = make_settings(host="127.0.0.1", port=port, log_level="warning", **overrides)
    server = DrainingServer(uvicorn_config(settings, create_app(settings)), drain_delay_s=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _read_all(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``limit`` seconds pass (False)."""
    sock.settimeout(0.2)
    data = b""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    return lines[0], headers, body


def _metrics(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=10).text


def test_slow_or_silent_headers_get_408_and_the_connection_closes(make_settings) -> None:
    with serving(make_settings, read_timeout_s=TIMEOUT) as (base, port):
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        started = time.monotonic()
        for i, sock in enumerate(sockets):
            if i % 2:  # half send a partial request, half nothing at all
                sock.sendall(b"POST /segment/cod HTTP/1.1\r\nHost: x\r\nContent-Type: ima")
        results = [_read_all(sock, 10) for sock in sockets]
        elapsed = time.monotonic() - started
        for sock in sockets:
            sock.close()
        healthy = httpx.get(f"{base}/health/ready", timeout=5)
    assert elapsed < TIMEOUT + 3  # all 20 closed by the server, not by the client
    for raw, closed in results:
        assert closed
        status, headers, body = _response(raw)
        assert status == "HTTP/1.1 408 Request Timeout"
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "error": {
                "code": "request_timeout",
                "message": "the request headers did not arrive within 1s",
            }
        }
    assert healthy.status_code == 200


def test_slow_body_gets_408_json_and_is_counted(make_settings) -> None:
    data = image_bytes(240, 320)
    with serving(make_settings, read_timeout_s=TIMEOUT) as (base, port):
        before = _metrics(base)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /segment/cod HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data[:100]
            )
            started = time.monotonic()
            raw, closed = _read_all(sock, 10)
            elapsed = time.monotonic() - started
        after = _metrics(base)
    status, headers, body = _response(raw)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert json.loads(body) == {
        "error": {
            "code": "request_timeout",
            "message": "the request body did not arrive within 1s",
        }
    }
    assert closed and headers["connection"] == "close"
    assert TIMEOUT - 0.1 < elapsed < TIMEOUT + 3
    for name, labels, delta in (
        ("focus_dropped_requests_total", {"task": "camouflage", "reason": "read_timeout"}, 1),
        ("focus_requests_total", {"task": "camouflage", "code": "408"}, 1),
        ("focus_inflight_pixels", {}, 0),
    ):
        assert metric_value(after, name, **labels) - metric_value(before, name, **labels) == delta


def test_client_gone_mid_upload_over_a_real_socket(make_settings) -> None:
    data = image_bytes(240, 320)
    with serving(make_settings) as (base, port):
        before = _metrics(base)
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /segment/cod HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    + f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data[: len(data) // 2]
                )
                time.sleep(0.1)
            # the socket is closed with half the body sent
        deadline = time.monotonic() + 10
        while True:
            after = _metrics(base)
            gone = metric_value(after, "focus_dropped_requests_total", task="camouflage",
                                reason="client_gone")  # fmt: skip
            if gone >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        ok = httpx.post(f"{base}/segment/cod", content=data,
                        headers={"content-type": "image/png"}, timeout=30)  # fmt: skip
    assert gone - metric_value(before, "focus_dropped_requests_total", task="camouflage",
                               reason="client_gone") == 5  # fmt: skip
    assert metric_value(after, "focus_requests_total", task="camouflage", code="499") == 5
    assert metric_value(after, "focus_requests_total", task="camouflage", code="500") == 0
    assert ok.status_code == 200


def test_promtool_accepts_a_live_scrape_under_load(make_settings, model_repository) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: Debian package `prometheus` (`make system-deps`)")
    images = [image_bytes(240, 320, seed=s) for s in range(4)]
    with serving(make_settings, model_repository=model_repository) as (base, _):
        before = _metrics(base)
        scrapes: list[str] = []

        def post(i: int) -> int:
            task = ("camouflage", "salient", "shadow")[i % 3]
            response = httpx.post(f"{base}/segment/{task}", content=images[i % 4],
                                  headers={"content-type": "image/png"}, timeout=60)  # fmt: skip
            return response.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = pool.map(post, range(24))
            for _ in range(5):  # scraped while requests are in flight
                scrapes.append(_metrics(base))
                time.sleep(0.05)
            codes = list(codes)
        scrapes.append(_metrics(base))
    assert codes == [200] * 24
    for text in scrapes:
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr
    after = scrapes[-1]
    for task in ("camouflage", "salient", "shadow"):
        delta = metric_value(after, "focus_requests_total", task=task, code="200") - (
            metric_value(before, "focus_requests_total", task=task, code="200")
        )
        assert delta == 8, task
        assert metric_value(after, "focus_batch_size_sum", task=task) == 8  # warm-up is direct
        assert metric_value(after, "focus_queue_depth", task=task) == 0
    assert metric_value(after, "focus_inflight_requests") == 0
    assert metric_value(after, "focus_inflight_pixels") == 0
