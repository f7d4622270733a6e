"""Helpers of the service benchmarks that run a real ``focus serve`` process (no benchmark here).

Used by ``drain.py`` and ``memory_bound.py`` (and their tests, which load these scripts by
path): start ``python -m focus_cli serve`` on a free loopback port, wait until it is ready,
read its memory from ``/proc``.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    repository: Path, env: dict[str, str], port: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``focus serve`` on 127.0.0.1 with ``FOCUS_*`` overrides; returns it and its base URL."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "FOCUS_INTRA_OP_THREADS": "1",
        "FOCUS_LOG_LEVEL": "info",
        **env,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "focus_cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--model-repository", str(repository)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen[str], base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            stderr = process.communicate()[1] or ""  # None when stderr was not piped
            raise RuntimeError(f"focus serve exited with {process.returncode}: {stderr[-3000:]}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"focus serve did not become ready in {timeout:.0f} s")
        time.sleep(0.2)


def stop(process: subprocess.Popen[str], timeout: float = 60) -> str:
    """SIGTERM (if still running), wait, and return its stderr."""
    if process.poll() is None:
        process.terminate()
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr


def proc_status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS: now, VmHWM: the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def picture_png(height: int, width: int, seed: int = 0) -> bytes:
    """A compressible picture (smooth gradient and a disc): large in pixels, small in bytes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, 0.2 * height
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (xx * (255.0 / width)).astype(np.uint8)
    rgb[..., 1] = (yy * (255.0 / height)).astype(np.uint8)
    rgb[..., 2] = 96
    rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (250, 240, 20)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=6)
    return buf.getvalue()
