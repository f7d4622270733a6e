"""Graceful drain of a real ``focus serve``: SIGTERM under a burst, as a load balancer sees it.

Starts ``focus serve`` on the model repository, sends a burst of concurrent /segment requests,
sends SIGTERM while they are in flight, and records from outside: when /health/ready turned 503,
whether requests sent during ``FOCUS_DRAIN_DELAY_S`` were still served, when the listener closed,
how many burst requests were lost, and when the process exited (bound: drain delay + one
``FOCUS_TIMEOUT_S``).

    python benchmarks/drain.py --repository model_repository --burst 24
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from serve_process import picture_png, start_serve, stop, wait_ready


@dataclass
class DrainResult:
    burst: int
    drain_delay_s: float
    timeout_s: float
    burst_codes: Counter[str] = field(default_factory=Counter)
    ready_codes_during_delay: Counter[str] = field(default_factory=Counter)
    served_during_delay: int = 0
    first_ready_503_s: float | None = None  # after SIGTERM
    listener_closed_s: float | None = None
    exit_s: float | None = None
    returncode: int | None = None
    stderr: str = ""

    @property
    def lost(self) -> int:
        return self.burst - self.burst_codes.get("200", 0)

    @property
    def bound_s(self) -> float:
        return self.drain_delay_s + self.timeout_s


def _post(base: str, data: bytes, task: str) -> str:
    try:
        response = httpx.post(
            f"{base}/segment/{task}",
            content=data,
            headers={"content-type": "image/png"},
            timeout=120,
        )
        return str(response.status_code)
    except httpx.TransportError as exc:
        return type(exc).__name__


def measure(
    repository: Path,
    *,
    burst: int = 24,
    drain_delay_s: float = 2.0,
    timeout_s: float = 20.0,
    tasks: tuple[str, ...] = ("camouflage",),
) -> DrainResult:
    env = {
        "FOCUS_DRAIN_DELAY_S": str(drain_delay_s),
        "FOCUS_TIMEOUT_S": str(timeout_s),
        "FOCUS_MAX_BATCH_SIZE": "4",
    }
    process, base = start_serve(repository, env)
    result = DrainResult(burst=burst, drain_delay_s=drain_delay_s, timeout_s=timeout_s)
    try:
        wait_ready(process, base)
        data = picture_png(480, 640)
        pool = ThreadPoolExecutor(burst + 2)
        pending = [pool.submit(_post, base, data, tasks[i % len(tasks)]) for i in range(burst)]
        deadline = time.monotonic() + 60
        while True:  # SIGTERM once most of the burst is inside the server
            text = httpx.get(f"{base}/metrics", timeout=10).text
            inflight = [x for x in text.splitlines() if x.startswith("focus_inflight_requests ")]
            if (inflight and float(inflight[0].split()[1]) >= burst // 2) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.02)
        sigterm = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stop_probe = threading.Event()

        def probe() -> None:  # what a load balancer sees: readiness, and new requests
            last_post = 0.0
            while not stop_probe.is_set():
                now = time.monotonic() - sigterm
                try:
                    code = httpx.get(f"{base}/health/ready", timeout=2).status_code
                except httpx.TransportError:
                    result.listener_closed_s = now
                    return
                if code == 503 and result.first_ready_503_s is None:
                    result.first_ready_503_s = now
                if now < drain_delay_s:
                    result.ready_codes_during_delay[str(code)] += 1
                    if now - last_post > 0.3:
                        last_post = now
                        if _post(base, data, tasks[0]) == "200":
                            result.served_during_delay += 1
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        result.burst_codes = Counter(f.result() for f in pending)
        result.returncode = process.wait(timeout=drain_delay_s + 3 * timeout_s + 30)
        result.exit_s = time.monotonic() - sigterm
        stop_probe.set()
        prober.join()
        pool.shutdown()
    finally:
        result.stderr = stop(process)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--burst", type=int, default=24)
    parser.add_argument("--drain-delay", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    r = measure(
        args.repository, burst=args.burst, drain_delay_s=args.drain_delay, timeout_s=args.timeout
    )
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| burst | burst codes | ready 503 after | ready codes during delay | served during "
          "delay | listener closed after | exit after | bound | exit code |")  # fmt: skip
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|")
    print(
        f"| {r.burst} | {dict(r.burst_codes)} | {r.first_ready_503_s:.2f} s | "
        f"{dict(r.ready_codes_during_delay)} | {r.served_during_delay} | "
        f"{r.listener_closed_s:.2f} s | {r.exit_s:.2f} s | {r.bound_s:.0f} s | {r.returncode} |"
    )
    print(f"Key: lost {r.lost} of {r.burst} in-flight requests; exit after {r.exit_s:.2f} s "
          f"(bound {r.bound_s:.0f} s = drain delay + FOCUS_TIMEOUT_S)")  # fmt: skip


if __name__ == "__main__":
    main()
