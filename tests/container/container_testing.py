"""Helpers of the container tests: the podman wrapper, the report, waiting, ports.

Every podman call goes through :class:`Podman`, whose environment points ``CONTAINERS_CONF`` at
deploy/local/containers.conf unless the caller set one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"


@dataclass(frozen=True)
class Podman:
    """The podman binary and the environment every call runs with."""

    binary: str
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
            )
        return result

    def script(self, name: str, *args: str, timeout: float) -> str:
        """Run deploy/local/<name> with this environment; its last stdout line (an image name)."""
        result = subprocess.run(
            [str(LOCAL / name), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{name} {args} failed:\n{result.stderr[-6000:]}"
        return result.stdout.strip().splitlines()[-1]


@dataclass
class Report:
    """Timings and sizes, printed in pytest's terminal summary."""

    lines: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: str) -> None:
        self.lines[name] = value


REPORT = Report()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], bool], timeout_s: float, what: str, on_fail: Callable[[], str] = str
) -> float:
    """Seconds until ``probe()`` is true; fails with ``what`` (and ``on_fail()``) after timeout."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(OSError, httpx.TransportError):
            if probe():
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} not within {timeout_s:.0f} s\n{on_fail()}")
        time.sleep(0.25)


def inspect(podman: Podman, name: str) -> dict:
    return json.loads(podman.run("inspect", name).stdout)[0]


@contextlib.contextmanager
def container(podman: Podman, *args: str) -> Iterator[str]:
    """``podman run -d ARGS``; yields the name; removed (with its anonymous volumes) after."""
    name = f"focus-ct-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    podman.run("run", "-d", "--name", name, *args)
    try:
        yield name
    finally:
        podman.run("rm", "-f", "-v", name, check=False, timeout=120)
