"""Triton ensemble vs focus-serve: the same model, the same images, the same concurrency.

    python benchmarks/triton_vs_service.py --task salient --concurrency 8 --duration 30

One task of ``--model-repository`` (default: the bundled demo models) is served twice on
loopback, one server at a time so they never compete for the CPU:

* focus-serve (uvicorn, ``POST /segment/<task>``, ONNX Runtime backend, its own batcher);
* a real ``tritonserver`` (``export.triton_local``: nvidia-pytriton's, cached under
  ~/.cache/focus-triton) over ``focus export triton --model-backend python-onnxruntime``:
  ``POST /v2/models/<task>_ensemble/infer`` with the image as a BYTES tensor (binary
  extension), preprocess -> network (dynamic batching) -> postprocess, PNG mask back.

Both get the same ONNX Runtime threads, max batch and batching delay; the load generator is
the same closed loop (asyncio + httpx, ``--concurrency`` workers for ``--duration`` seconds
after a warm-up) sending the same JPEG images (one size, so one padded shape). Before timing,
the first image's masks from both servers are compared (max grey-level difference printed).
Prints the CPU, the load average, a table (images/s, p50/p99 latency, failures, mean batch
the network ran) and ends with the ratio Triton / focus-serve images/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
from backends import cpu_description
from load import LevelResult, _batch_totals, make_images, start_server
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from export.triton import TritonOptions, write_triton_repository  # noqa: E402
from export.triton_ensemble import ensemble_names  # noqa: E402
from export.triton_local import LocalTritonServer, install  # noqa: E402
from models.contract import ENSEMBLE_INPUT, ENSEMBLE_OUTPUT  # noqa: E402
from models.repository import scan_repository  # noqa: E402

Send = Callable[[httpx.AsyncClient, bytes], Awaitable[bytes | None]]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


async def closed_loop(
    send: Send, images: list[bytes], concurrency: int, duration_s: float, config: str
) -> LevelResult:
    """``concurrency`` workers, each sending the next image as soon as its last one returned."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(send(client, images[i % len(images)]) for i in range(concurrency)))
        latencies: list[float] = []
        failed = 0
        started = time.perf_counter()
        stop_at = started + duration_s

        async def worker(index: int) -> None:
            nonlocal failed
            k = index
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                ok = await send(client, images[k % len(images)]) is not None
                k += concurrency
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LevelResult(config, concurrency, len(latencies), failed, elapsed, latencies, 0.0)


def service_sender(base: str, task: str) -> Send:
    url = f"{base}/segment/{task}"

    async def send(client: httpx.AsyncClient, data: bytes) -> bytes | None:
        try:
            response = await client.post(url, content=data, headers={"content-type": "image/jpeg"})
        except httpx.HTTPError:
            return None
        return response.content if response.status_code == 200 else None

    return send


def triton_sender(http_url: str, model: str) -> Send:
    """The V2 binary-tensor request tritonclient would send, over the shared httpx client."""
    import tritonclient.http as triton_http

    url = f"http://{http_url}/v2/models/{model}/infer"
    outputs = [triton_http.InferRequestedOutput(ENSEMBLE_OUTPUT, binary_data=True)]

    async def send(client: httpx.AsyncClient, data: bytes) -> bytes | None:
        tensor = triton_http.InferInput(ENSEMBLE_INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.asarray([[data]], dtype=np.object_))
        body, json_size = triton_http.InferenceServerClient.generate_request_body(
            [tensor], outputs=outputs
        )
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_size),
        }
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        header_length = response.headers.get("Inference-Header-Content-Length")
        result = triton_http.InferenceServerClient.parse_response_body(
            response.content, header_length=int(header_length) if header_length else None
        )
        return bytes(result.as_numpy(ENSEMBLE_OUTPUT)[0, 0])

    return send


def _grey(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("L")).astype(np.int16)


def _triton_batches(http_url: str, model: str, version: int) -> tuple[float, float]:
    stats = httpx.get(f"http://{http_url}/v2/models/{model}/versions/{version}/stats").json()
    entry = stats["model_stats"][0]
    return float(entry["inference_count"]), float(entry["execution_count"])


def _single_task_repository(source: Path, task: str, work: Path) -> tuple[Path, int]:
    entry = scan_repository(source)[task]
    target = work / "repo" / task / str(entry.version)
    shutil.copytree(entry.directory, target, ignore=shutil.ignore_patterns("*.safetensors"))
    return work / "repo", entry.version


def run_service(args: argparse.Namespace, repo: Path, images: list[bytes]) -> tuple:
    env = {
        "FOCUS_BACKEND": "onnxruntime",
        "FOCUS_MAX_BATCH_SIZE": str(args.max_batch),
        "FOCUS_MAX_DELAY_MS": str(args.max_delay_ms),
        "FOCUS_INTRA_OP_THREADS": str(args.threads),
        "FOCUS_LOG_LEVEL": "warning",
    }
    with start_server(repo, env) as base:
        send = service_sender(base, args.task)
        first = asyncio.run(_one(send, images[0]))
        before = _batch_totals(httpx.get(f"{base}/metrics").text, args.task)
        load = _load()
        result = asyncio.run(
            closed_loop(send, images, args.concurrency, args.duration, "focus-serve")
        )
        after = _batch_totals(httpx.get(f"{base}/metrics").text, args.task)
    batches = after[1] - before[1]
    result.mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
    return result, first, load


def run_triton(
    args: argparse.Namespace, repo: Path, version: int, images: list[bytes], work: Path
) -> tuple:
    found = install()
    options = TritonOptions(
        model_backend="python-onnxruntime",
        kind="KIND_CPU",
        max_batch=args.max_batch,
        max_queue_delay_us=int(args.max_delay_ms * 1000),
        python_path=(str(found.packages), str(ROOT)),
        python_instances=args.python_instances,
        intra_op_threads=args.threads,
    )
    write_triton_repository(repo, work / "triton", options)
    names = ensemble_names(args.task)
    with LocalTritonServer(found, work / "triton", log_path=work / "tritonserver.log") as server:
        send = triton_sender(server.http_url, names.ensemble)
        first = asyncio.run(_one(send, images[0]))
        before = _triton_batches(server.http_url, names.network, version)
        load = _load()
        result = asyncio.run(
            closed_loop(send, images, args.concurrency, args.duration, "triton ensemble")
        )
        after = _triton_batches(server.http_url, names.network, version)
    executions = after[1] - before[1]
    result.mean_batch = (after[0] - before[0]) / executions if executions else float("nan")
    return result, first, load


async def _one(send: Send, data: bytes) -> bytes:
    async with httpx.AsyncClient(timeout=300) as client:
        png = await send(client, data)
    if png is None:
        raise RuntimeError("the server did not answer the first image with a mask")
    return png


def print_table(results: list[tuple[LevelResult, str]]) -> None:
    header = (
        f"{'server':<16} {'conc':>4} {'done':>6} {'failed':>6} {'img/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'batch':>6}  load at its start"
    )
    print(header)
    print("-" * len(header))
    for r, load in results:
        print(
            f"{r.config:<16} {r.concurrency:>4} {r.completed:>6} {r.failed:>6} "
            f"{r.images_per_s:>8.2f} {r.percentile_ms(50):>8.1f} {r.percentile_ms(99):>8.1f} "
            f"{r.mean_batch:>6.2f}  {load}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--task", default="salient")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per server")
    parser.add_argument("--size", default="240x320", help="image HxW (default 240x320)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--python-instances", type=int, default=2, help="Triton preprocess/postprocess instances"
    )
    args = parser.parse_args(argv)

    height, width = (int(v) for v in args.size.lower().split("x"))
    images = make_images(16, height, width)
    print(f"CPU: {cpu_description()}")
    print(
        f"task {args.task}, {len(images)} JPEG images {height}x{width}, concurrency "
        f"{args.concurrency}, {args.duration:.0f} s each, max batch {args.max_batch}, delay "
        f"{args.max_delay_ms} ms, ORT threads {args.threads or 'default'}, Triton Python "
        f"instances {args.python_instances}"
    )
    with tempfile.TemporaryDirectory(prefix="focus-triton-bench-") as tmp:
        work = Path(tmp)
        repo, version = _single_task_repository(args.model_repository, args.task, work)
        service, service_png, service_load = run_service(args, repo, images)
        triton, triton_png, triton_load = run_triton(args, repo, version, images, work)
    diff = int(np.abs(_grey(service_png) - _grey(triton_png)).max())
    print(f"first image: masks {_grey(service_png).shape}, max grey-level difference {diff}")
    print()
    print_table([(service, service_load), (triton, triton_load)])
    print()
    print(f"failed requests: {service.failed + triton.failed}")
    ratio = triton.images_per_s / service.images_per_s if service.images_per_s else float("nan")
    print(f"key ratio, Triton ensemble / focus-serve images/s (c={args.concurrency}): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
