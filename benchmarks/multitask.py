"""Five tasks loaded under mixed load vs one task alone: does sharing the cores cost throughput?

Runs a real ``focus serve`` twice on the same machine: (a) a repository with one task, every
client asking for it; (b) the repository with all its tasks, clients cycling through them.
``--clients`` closed-loop clients send one image after another for ``--seconds`` (after a
warm-up); reported: images/s, latency p50/p99. ``--rounds`` alternates the two scenarios
(alone, mixed, alone, mixed, ...) so that the load of a shared machine hits both alike; the key
ratio is the median of the per-round ratios. Targets (issue 11): (b) >= 0.9 x (a) images/s,
p99 <= 3 x p50. ``--source DIR`` runs another checkout's service (e.g. the code before the
shared executor) for comparison.

    python benchmarks/multitask.py --repository model_repository --clients 8 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import serve_process
from serve_process import picture_png, start_serve, stop, wait_ready


@dataclass
class LoadResult:
    label: str
    tasks: tuple[str, ...]
    images: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def _load(base: str, tasks: tuple[str, ...], clients: int, warmup: float, seconds: float) -> tuple:
    data = picture_png(480, 640)
    start = time.monotonic() + warmup
    end = start + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = index
            while True:
                t0 = time.monotonic()
                if t0 >= end:
                    return
                task = tasks[n % len(tasks)]
                n += 1
                response = http.post(
                    f"{base}/segment/{task}", content=data, headers={"content-type": "image/png"}
                )
                t1 = time.monotonic()
                if t0 >= start and t1 <= end:
                    with lock:
                        if response.status_code == 200:
                            latencies.append(t1 - t0)
                        else:
                            errors[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def measure(
    label: str,
    repository: Path,
    tasks: tuple[str, ...],
    *,
    clients: int,
    warmup: float,
    seconds: float,
    source: Path,
) -> LoadResult:
    serve_process.ROOT = source
    env = {"FOCUS_INTRA_OP_THREADS": "0", "FOCUS_LOG_LEVEL": "warning", "FOCUS_MAX_QUEUE": "256"}
    process, base = start_serve(repository, env)
    try:
        wait_ready(process, base)
        latencies, errors = _load(base, tasks, clients, warmup, seconds)
    finally:
        stop(process)
    return LoadResult(label, tasks, len(latencies), errors, seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--source", type=Path, default=serve_process.ROOT)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    repository = args.repository.resolve()
    tasks = tuple(sorted(p.name for p in repository.iterdir() if (p / "focus.json").exists()))
    rounds: list[tuple[LoadResult, LoadResult]] = []
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "single"
        shutil.copytree(repository / tasks[0], single / tasks[0])
        common = {"clients": args.clients, "warmup": args.warmup, "seconds": args.seconds}
        for _ in range(args.rounds):
            alone = measure("one task alone", single, tasks[:1], source=args.source, **common)
            mixed = measure(
                f"{len(tasks)} tasks, mixed load", repository, tasks, source=args.source, **common
            )
            rounds.append((alone, mixed))
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; source {args.source}")  # fmt: skip
    print("| round | scenario | clients | images | errors | images/s | p50 ms | p99 ms | p99/p50 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, pair in enumerate(rounds, 1):
        for r in pair:
            p50, p99 = r.pct(0.50), r.pct(0.99)
            print(f"| {i} | {r.label} | {args.clients} | {r.images} | {r.errors} | "
                  f"{r.rate:.1f} | {p50:.0f} | {p99:.0f} | {p99 / p50:.2f} |")  # fmt: skip
    ratio = statistics.median(m.rate / a.rate for a, m in rounds)
    tail = statistics.median(m.pct(0.99) / m.pct(0.5) for _, m in rounds)
    print(f"Key: mixed / alone throughput = {ratio:.2f} (median of {len(rounds)} rounds; target "
          f">= 0.9); mixed p99/p50 = {tail:.2f} (target <= 3)")  # fmt: skip


if __name__ == "__main__":
    main()
