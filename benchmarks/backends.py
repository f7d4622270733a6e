"""PyTorch eager vs ONNX Runtime (CPU; CUDA when present) vs TensorRT (when present).

    python benchmarks/backends.py --presets tiny large --cache runs/benchmark-cache

For each preset: one network (random weights, seed 0: speed does not depend on them), exported
once to ONNX and cached under ``--cache/<preset>/`` (the large trace takes a long time), then
each backend on the same padded input (a 4:3 photo at the preset's short side) at batch 1 and
8 (``large`` on CPU: batch 1 only). Median latency over ``--repeats`` runs after ``--warmup``,
images/s, and the speed-up over PyTorch eager on the same device class (fp32). The ONNX Runtime
and TensorRT rows run through the service's own backends, i.e. what is served. Prints the CPU
model and flags first, a table, and ends with the key ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS_OF_INTEREST = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_bf16",
    "amx_tile",
    "avx_vnni",
)


def cpu_description() -> str:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    model = model or platform.processor() or "unknown"
    shown = [f for f in FLAGS_OF_INTEREST if f in flags]
    return f"{model}; {os.cpu_count()} logical CPUs; flags: {' '.join(shown) or 'n/a'}"


def time_interleaved(fns: list[Callable[[], object]], warmup: int, repeats: int) -> list[float]:
    """Median wall time of each of ``fns`` in seconds, run in turn (fn0, fn1, fn0, fn1, ...)
    so that a change of machine load during the run hits every backend alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def prepare(preset: str, cache: Path) -> tuple[Path, Path]:
    """(checkpoint dir, model.onnx) for ``preset``, exported once into ``cache``."""
    import torch

    from export.onnx import export_onnx
    from models.build import build_focus
    from models.checkpoint import save_checkpoint
    from models.config import get_preset, make_card

    directory = cache / preset
    checkpoint, onnx_path = directory / "checkpoint", directory / "model.onnx"
    if not (checkpoint / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = build_focus(get_preset(preset)).eval()
        save_checkpoint(model, make_card("salient", preset), checkpoint)
    if not onnx_path.is_file():
        from models.checkpoint import load_checkpoint

        model, card = load_checkpoint(checkpoint)
        print(f"exporting {preset} to {onnx_path} (once; cached) ...", flush=True)
        start = time.perf_counter()
        export_onnx(model, card, onnx_path)
        print(f"  exported in {time.perf_counter() - start:.0f} s", flush=True)
    return checkpoint, onnx_path


def inputs(card, batch: int) -> tuple[np.ndarray, np.ndarray]:
    d = card.size_divisibility
    h = -(-card.input_short_side // d) * d
    w = -(-(card.input_short_side * 4 // 3) // d) * d
    rng = np.random.default_rng(0)
    image = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
    edges = rng.random((batch, 3, h, w), dtype=np.float32)
    return image, edges


def run_preset(preset: str, args: argparse.Namespace, rows: list[dict]) -> None:
    import torch

    from models.checkpoint import load_checkpoint
    from service.backends.onnxruntime import OnnxRuntimeBackend, cuda_provider_available

    checkpoint, onnx_path = prepare(preset, args.cache)
    model, card = load_checkpoint(checkpoint)
    cuda = torch.cuda.is_available() and not args.cpu_only
    batches = [b for b in args.batches if not (preset in args.cpu_batch1 and b > 1)]

    def add(backend: str, device: str, batch: int, seconds: float, baseline: float | None) -> None:
        rows.append(
            {
                "preset": preset,
                "backend": backend,
                "device": device,
                "batch": batch,
                "median_ms": seconds * 1e3,
                "images_per_s": batch / seconds,
                "speedup": (baseline / seconds) if baseline else 1.0,
            }
        )
        print(
            f"  {preset:<6} {backend:<22} {device:<5} b{batch:<2} {seconds * 1e3:9.1f} ms",
            flush=True,
        )

    torch.set_num_threads(args.threads)
    ort_cpu = OnnxRuntimeBackend(onnx_path, card, device="cpu", intra_op_threads=args.threads)
    for batch in batches:
        image, edges = inputs(card, batch)
        x, e = torch.from_numpy(image), torch.from_numpy(edges)

        def eager(x=x, e=e) -> object:
            with torch.inference_mode():
                return model(x, e)

        base, t = time_interleaved(
            [eager, lambda image=image, edges=edges: ort_cpu.infer(image, edges)],
            args.warmup,
            args.repeats,
        )
        add("pytorch eager fp32", "cpu", batch, base, None)
        add("onnxruntime fp32", "cpu", batch, t, base)
    ort_cpu.close()

    if not cuda:
        return
    gpu_model = model.cuda()
    ort_gpu = None
    if cuda_provider_available():
        ort_gpu = OnnxRuntimeBackend(onnx_path, card, device="cuda", require_gpu=True)
    engine = _tensorrt_engine(onnx_path, card, args)
    for batch in args.batches:
        image, edges = inputs(card, batch)
        x, e = torch.from_numpy(image).cuda(), torch.from_numpy(edges).cuda()

        def eager_gpu(x=x, e=e) -> object:
            with torch.inference_mode():
                out = gpu_model(x, e)
            torch.cuda.synchronize()
            return out

        named: list[tuple[str, Callable[[], object]]] = [("pytorch eager fp32", eager_gpu)]
        if ort_gpu is not None:
            named.append(("onnxruntime cuda fp32", lambda i=image, e=edges: ort_gpu.infer(i, e)))
        if engine is not None and batch <= engine.max_batch:
            named.append(
                (f"tensorrt {engine.precision}", lambda i=image, e=edges: engine.infer(i, e))
            )
        times = time_interleaved([fn for _, fn in named], args.warmup, args.repeats)
        for (name, _), t in zip(named, times, strict=True):
            add(name, "cuda", batch, t, None if name.startswith("pytorch") else times[0])


def _tensorrt_engine(onnx_path: Path, card, args: argparse.Namespace):
    """The service's TensorRT backend on an fp16 engine built once into the cache, or None."""
    try:
        from export.tensorrt import TensorRTUnavailableError, build_engine, import_tensorrt
        from service.backends.tensorrt import TensorRTBackend

        import_tensorrt()
    except Exception as exc:  # noqa: BLE001 - report and go on without TensorRT
        print(f"  (no TensorRT: {exc})")
        return None
    engine_path = onnx_path.with_name("model.fp16.engine")
    try:
        if not engine_path.is_file():
            short = -(-card.input_short_side // 32) * 32
            long = -(-(card.input_short_side * 4 // 3) // 32) * 32
            shapes = {"min": (short, long), "opt": (short, long), "max": (short, long)}
            build_engine(
                onnx_path, engine_path, precision="fp16", max_batch=max(args.batches), shapes=shapes
            )
        return TensorRTBackend([engine_path], card)
    except (TensorRTUnavailableError, RuntimeError) as exc:
        print(f"  (TensorRT unavailable: {exc})")
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny"], help="presets (tiny large ...)")
    p.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "runs" / "benchmark-cache",
        help="where exported models are kept between runs",
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument(
        "--cpu-batch1",
        nargs="*",
        default=["large", "giant"],
        help="presets measured at batch 1 only on the CPU",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for both PyTorch and ONNX Runtime",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)

    import onnxruntime
    import torch

    print(f"CPU: {cpu_description()}")
    print(
        f"torch {torch.__version__} ({args.threads} threads), onnxruntime "
        f"{onnxruntime.__version__}, CUDA: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    rows: list[dict] = []
    for preset in args.presets:
        run_preset(preset, args, rows)

    print()
    print("| preset | backend | device | batch | median ms | images/s | vs eager |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['backend']} | {r['device']} | {r['batch']} | "
            f"{r['median_ms']:.1f} | {r['images_per_s']:.2f} | {r['speedup']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    key = [r for r in rows if r["backend"].startswith("tensorrt") and r["batch"] == 8]
    key = key or [
        r
        for r in rows
        if r["backend"] == "onnxruntime fp32"
        and r["device"] == "cpu"
        and r["preset"] == args.presets[0]
    ]
    if key:
        r = key[-1]
        print(
            f"\nkey ratio: {r['backend']} on {r['device']} is {r['speedup']:.2f}x PyTorch eager "
            f"fp32 ({r['preset']}, batch {r['batch']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
