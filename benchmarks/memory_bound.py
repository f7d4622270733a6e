"""Peak memory of a real ``focus serve`` under concurrent 40 MP uploads (admission's pixel budget).

Sends ``--concurrency`` simultaneous /segment requests of one ``--megapixels`` image to a fresh
``focus serve`` and reads the server's peak RSS (``VmHWM``) from ``/proc``. The pixel budget
``FOCUS_MAX_INFLIGHT_PIXELS`` admits what fits and answers the rest 503 ``overloaded`` at once,
so the peak stays near ``idle + budget x bytes-per-pixel`` whatever the concurrency.

    python benchmarks/memory_bound.py --concurrency 12 --megapixels 40
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from serve_process import picture_png, proc_status_kib, start_serve, stop, wait_ready

MiB = 1024 * 1024


@dataclass
class MemoryResult:
    concurrency: int
    pixels: int
    budget_pixels: int
    idle_rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def bytes_per_budget_pixel(self) -> float:
        return (self.peak_rss_mib - self.idle_rss_mib) * MiB / self.budget_pixels


def measure(
    repository: Path,
    *,
    concurrency: int = 12,
    megapixels: float = 40.0,
    budget_pixels: int = 80_000_000,
) -> MemoryResult:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    data = picture_png(height, width)
    env = {
        "FOCUS_MAX_INFLIGHT_PIXELS": str(budget_pixels),
        "FOCUS_TIMEOUT_S": "120",
        "FOCUS_LOG_LEVEL": "warning",
    }
    process, base = start_serve(repository, env)
    result = MemoryResult(concurrency, width * height, budget_pixels)
    try:
        wait_ready(process, base)
        time.sleep(1.0)
        result.idle_rss_mib = proc_status_kib(process.pid, "VmRSS") / 1024
        barrier = threading.Barrier(concurrency)

        def post(_: int) -> str:
            barrier.wait()
            response = httpx.post(
                f"{base}/segment/camouflage",
                content=data,
                headers={"content-type": "image/png"},
                timeout=300,
            )
            return str(response.status_code)

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            result.codes = Counter(pool.map(post, range(concurrency)))
        result.seconds = time.monotonic() - started
        result.peak_rss_mib = proc_status_kib(process.pid, "VmHWM") / 1024
    finally:
        stop(process)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--megapixels", type=float, default=40.0)
    parser.add_argument("--budget", type=int, nargs="+", default=[80_000_000])
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| budget (pixels) | concurrent | image pixels | codes | idle RSS | peak RSS | "
          "peak - idle per budget pixel | wall |")  # fmt: skip
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    results = []
    for budget in args.budget:
        r = measure(
            args.repository,
            concurrency=args.concurrency,
            megapixels=args.megapixels,
            budget_pixels=budget,
        )
        results.append(r)
        print(
            f"| {budget} | {r.concurrency} | {r.pixels} | {dict(r.codes)} | "
            f"{r.idle_rss_mib:.0f} MiB | {r.peak_rss_mib:.0f} MiB | "
            f"{r.bytes_per_budget_pixel:.1f} B | {r.seconds:.1f} s |"
        )
    worst = max(results, key=lambda r: r.bytes_per_budget_pixel)
    print(f"Key: peak RSS = idle + {worst.bytes_per_budget_pixel:.1f} bytes x budget pixel "
          f"(budget {worst.budget_pixels}: {worst.peak_rss_mib:.0f} MiB peak)")  # fmt: skip


if __name__ == "__main__":
    main()
