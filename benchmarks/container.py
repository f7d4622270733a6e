"""Throughput of the CPU container vs `focus serve` on the host: same model, same load script.

Runs benchmarks/load.py's closed-loop load (``run_level``) against two servers, one after the
other so they never compete for the CPU: the host's service (uvicorn on 127.0.0.1, started as
load.py starts it) and the image built by ``deploy/local/build.sh cpu`` run with podman
(published on a loopback port, read-only root, as `make container-test` runs it). Both serve the
bundled model repository with the same FOCUS_* settings. The key ratio is container / host
images/s at the highest concurrency: what the container (network namespace, port forwarding,
the image's own library builds) costs.

    CONTAINERS_CONF=deploy/local/containers.conf python benchmarks/container.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from load import LevelResult, make_images, print_table, run_level, start_server  # noqa: E402
from machine import cpu_model  # noqa: E402
from serve_process import free_port  # noqa: E402


def _container_server(image: str, env: dict[str, str]) -> tuple[str, str]:
    """``podman run -d`` of the image; returns (container name, base URL) once ready."""
    port = free_port()
    name = f"focus-bench-{os.getpid()}"
    flags = [f"--env={k}={v}" for k, v in env.items()]
    subprocess.run(
        ["podman", "run", "-d", "--rm", "--read-only", "--name", name,
         f"--publish=127.0.0.1:{port}:8000", *flags, image],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return name, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the container did not become ready in 300 s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/focus-serve:cpu")
    parser.add_argument("--task", default="camouflage")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--size", default="240x320", help="image HxW (default 240x320)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="host/container rounds, alternating their order"
    )
    args = parser.parse_args(argv)

    height, width = (int(v) for v in args.size.lower().split("x"))
    images = make_images(16, height, width)
    settings = {
        "FOCUS_MAX_BATCH_SIZE": "8",
        "FOCUS_MAX_DELAY_MS": "10",
        "FOCUS_INTRA_OP_THREADS": "0",
        "FOCUS_LOG_LEVEL": "warning",
        "FOCUS_BACKEND": "onnxruntime",
    }
    results: list[LevelResult] = []

    def levels(base: str, config: str) -> None:
        for c in args.concurrency:
            result = asyncio.run(run_level(base, args.task, images, c, args.duration, config, {}))
            results.append(result)
            print(f"  {config} c={c}: {result.images_per_s:.2f} img/s", file=sys.stderr)

    def host() -> None:
        with start_server(ROOT / "model_repository", settings) as base:
            levels(base, "host")

    def container() -> None:
        name, base = _container_server(args.image, settings)
        try:
            levels(base, "container")
        finally:
            subprocess.run(["podman", "stop", "--time=30", name], capture_output=True, check=False)

    # host, container, container, host, ...: a drift of the shared machine's load cancels out
    for round_ in range(args.rounds):
        for run in (host, container) if round_ % 2 == 0 else (container, host):
            run()

    top = max(args.concurrency)

    def mean_rate(config: str) -> float:
        rates = [r.images_per_s for r in results if r.config == config and r.concurrency == top]
        return sum(rates) / len(rates)

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    print(f"model: bundled {args.task}, images {args.size}, {args.duration:.0f} s per level")
    print_table(results)
    print(f"failed requests: {sum(r.failed for r in results)}")
    print(f"mean images/s at c={top} over {args.rounds} rounds: host {mean_rate('host'):.2f}, "
          f"container {mean_rate('container'):.2f}")  # fmt: skip
    print(f"key ratio, container / host images/s at c={top}: "
          f"{mean_rate('container') / mean_rate('host'):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
