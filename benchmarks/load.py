"""HTTP load benchmark of the segmentation service: throughput, latency, batching, overhead.

Drives ``POST /segment/<task>`` with an asyncio + httpx closed-loop load generator at several
concurrency levels and reports images/s, p50/p95/p99 latency, failed requests and the mean
batch size the server formed (from ``/metrics``). Two ratios summarise it:

* batching: throughput with dynamic batching (``FOCUS_MAX_BATCH_SIZE``, default 8) over the
  same server with ``FOCUS_MAX_BATCH_SIZE=1``, at the highest concurrency;
* overhead (the key ratio): service throughput over the raw backend's throughput when it is fed
  pre-processed batches of the same size in-process (decode, pre/post-processing, HTTP and
  queueing are what the service adds).

By default it starts the server itself (uvicorn, 127.0.0.1 only) on the given model
repository, once per batching configuration, and measures the raw backend after the servers
have stopped, so nothing competes for the CPU. ``--url`` benchmarks an already running server
instead (then only that server's numbers, without the batching comparison).

    python benchmarks/load.py --model-repository model_repository --task camouflage
    python benchmarks/load.py --backend auto   # the fastest gated precision variant (issue 17)

``--backend`` / ``--precision`` set FOCUS_BACKEND / FOCUS_PRECISION for the servers and choose
the raw backend the same way (``service.backends.factory``), so a variant is compared with
itself; the table header names the backend and precision the server really loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_process import free_port, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class LevelResult:
    config: str
    concurrency: int
    completed: int
    failed: int
    elapsed_s: float
    latencies_s: list[float]
    mean_batch: float

    @property
    def images_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")
        )


# ----------------------------------------------------------------------------- inputs


def make_images(count: int, height: int, width: int) -> list[bytes]:
    """Distinct JPEG photos-like images of one size (one padded shape, so they can batch)."""
    rng = np.random.default_rng(0)
    images = []
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(count):
        rgb = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
        cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, height / 4
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(150, 256, size=3)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return images


# ----------------------------------------------------------------------------- server


@contextlib.contextmanager
def start_server(repository: Path, env_overrides: dict[str, str]) -> Iterator[str]:
    """uvicorn on 127.0.0.1 with FOCUS_* settings; yields the base URL once ready."""
    port = free_port()
    env = {**os.environ, "FOCUS_MODEL_REPOSITORY": str(repository), **env_overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app_from_env",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, timeout=300)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


# ------------------------------------------------------------------------------- load


def _batch_totals(text: str, task: str) -> tuple[float, float]:
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("task") != task:
                continue
            if sample.name == "focus_batch_size_sum":
                total = sample.value
            elif sample.name == "focus_batch_size_count":
                count = sample.value
    return total, count


async def run_level(
    base: str,
    task: str,
    images: list[bytes],
    concurrency: int,
    duration_s: float,
    config: str,
    headers: dict[str, str],
) -> LevelResult:
    url = f"{base}/segment/{task}"
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
    )
    request_headers = {"content-type": "image/jpeg", **headers}
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        # warm-up: every connection once, not measured
        await asyncio.gather(
            *(client.post(url, content=images[i % len(images)], headers=request_headers)
              for i in range(concurrency))
        )  # fmt: skip
        before = _batch_totals((await client.get(f"{base}/metrics")).text, task)
        latencies: list[float] = []
        failed = 0
        started = time.perf_counter()
        stop_at = started + duration_s

        async def worker(index: int) -> None:
            nonlocal failed
            k = index
            while time.perf_counter() < stop_at:
                data = images[k % len(images)]
                k += concurrency
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=data, headers=request_headers)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = _batch_totals((await client.get(f"{base}/metrics")).text, task)
    batches = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
    return LevelResult(config, concurrency, len(latencies), failed, elapsed, latencies, mean_batch)


# -------------------------------------------------------------------------- raw backend


def raw_backend_throughput(
    repository: Path,
    task: str,
    image: bytes,
    batch: int,
    duration_s: float,
    threads: int,
    backend_name: str = "onnxruntime",
    precision: str = "auto",
) -> tuple[float, str]:
    """Images/s of the backend alone on pre-processed batches of ``batch`` copies of ``image``,
    and which backend and precision that was."""
    from models.repository import scan_repository
    from service.backends.factory import VariantOptions, create_backend
    from service.pipeline import limit_library_threads, prepare

    limit_library_threads()
    entry = scan_repository(repository)[task]
    backend = create_backend(
        entry,
        backend=backend_name,
        intra_op_threads=threads,
        variants=VariantOptions(precision=precision, openvino_cache=_openvino_cache()),
    )
    loaded = f"{backend.name} {backend.precision}"
    prepared = prepare(image, entry.card, 10**9).inputs
    images = np.stack([prepared.image] * batch)
    edges = np.stack([prepared.edges] * batch)
    backend.infer(images, edges)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        backend.infer(images, edges)
        done += batch
    rate = done / (time.perf_counter() - started)
    backend.close()
    return rate, loaded


def _openvino_cache() -> Path:
    return Path(os.environ.get("FOCUS_OPENVINO_CACHE", "/tmp/focus-load-openvino-cache"))


# ------------------------------------------------------------------------------ report


def print_table(results: list[LevelResult]) -> None:
    header = (
        f"{'config':<12} {'conc':>4} {'done':>6} {'failed':>6} {'img/s':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p99/p50':>8} {'batch':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        p50, p99 = r.percentile_ms(50), r.percentile_ms(99)
        print(
            f"{r.config:<12} {r.concurrency:>4} {r.completed:>6} {r.failed:>6} "
            f"{r.images_per_s:>8.2f} {p50:>8.1f} {r.percentile_ms(95):>8.1f} {p99:>8.1f} "
            f"{p99 / p50:>8.2f} {r.mean_batch:>6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--task", default="camouflage")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--size", default="240x320", help="image HxW (default 240x320)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="FOCUS_INTRA_OP_THREADS")
    parser.add_argument("--api-key", help="X-API-Key to send")
    parser.add_argument("--backend", default="onnxruntime", help="FOCUS_BACKEND (onnxruntime)")
    parser.add_argument("--precision", default="auto", help="FOCUS_PRECISION (auto)")
    args = parser.parse_args(argv)

    height, width = (int(v) for v in args.size.lower().split("x"))
    images = make_images(16, height, width)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    top = max(args.concurrency)
    results: list[LevelResult] = []

    def levels(base: str, config: str) -> None:
        tasks = httpx.get(f"{base}/tasks", headers=headers, timeout=30).json()["tasks"]
        model = next(t["model"] for t in tasks if t["name"] == args.task)
        print(f"  {config}: server loaded {model['backend']} {model.get('precision', '?')} "
              f"{model.get('selection', '')}", file=sys.stderr)  # fmt: skip
        for c in args.concurrency:
            result = asyncio.run(
                run_level(base, args.task, images, c, args.duration, config, headers)
            )
            results.append(result)
            print(f"  {config} c={c}: {result.images_per_s:.2f} img/s", file=sys.stderr)

    if args.url:
        levels(args.url.rstrip("/"), "server")
        print_table(results)
        return 0

    common = {
        "FOCUS_MAX_DELAY_MS": str(args.max_delay_ms),
        "FOCUS_INTRA_OP_THREADS": str(args.threads),
        "FOCUS_LOG_LEVEL": "warning",
        "FOCUS_BACKEND": args.backend,
        "FOCUS_PRECISION": args.precision,
        "FOCUS_OPENVINO_CACHE": str(_openvino_cache()),
    }
    batched = f"batch<={args.max_batch_size}"
    for config, size in ((batched, args.max_batch_size), ("batch=1", 1)):
        with start_server(
            args.model_repository, {**common, "FOCUS_MAX_BATCH_SIZE": str(size)}
        ) as base:
            levels(base, config)

    on = next(r for r in results if r.config == batched and r.concurrency == top)
    off = next(r for r in results if r.config == "batch=1" and r.concurrency == top)
    raw_batch = max(1, round(on.mean_batch)) if np.isfinite(on.mean_batch) else 1
    raw, loaded = raw_backend_throughput(
        args.model_repository, args.task, images[0], raw_batch, args.duration, args.threads,
        args.backend, args.precision,
    )  # fmt: skip
    print(f"FOCUS_BACKEND={args.backend} FOCUS_PRECISION={args.precision}: {loaded}")
    print_table(results)
    print()
    print(f"raw backend ({loaded}, in-process, batch {raw_batch}): {raw:.2f} img/s")
    print(f"batching ratio (batch<={args.max_batch_size} / batch=1 at c={top}): "
          f"{on.images_per_s / off.images_per_s:.2f}")  # fmt: skip
    print(f"p99/p50 at c={top} with batching: {on.percentile_ms(99) / on.percentile_ms(50):.2f}")
    print(f"failed requests: {sum(r.failed for r in results)}")
    print(f"key ratio, service / raw backend throughput at batch {raw_batch} (c={top}): "
          f"{on.images_per_s / raw:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
