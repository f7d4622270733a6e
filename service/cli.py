"""``focus serve`` and ``focus segment``: the service's subcommands of the ``focus`` CLI.

``register(subparsers)`` adds both; each sets ``func`` to a handler taking the parsed arguments
and returning the exit status. Nothing heavy is imported until a handler runs (no torch, ever,
unless the torch backend is chosen).

``focus segment`` runs the service's chain without HTTP: the same repository scan, backend
choice, decoding, pre/post-processing and encodings as ``POST /segment``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FORMATS = ("png", "json", "rgba", "overlay")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``segment`` to the ``focus`` CLI's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP service (uvicorn)",
        description="Serve every task of the model repository over HTTP. Every option defaults "
        "to its FOCUS_* environment variable (see the README).",
    )
    serve.add_argument("--host", help="bind address (FOCUS_HOST)")
    serve.add_argument("--port", type=int, help="port (FOCUS_PORT)")
    serve.add_argument("--model-repository", help="model repository (FOCUS_MODEL_REPOSITORY)")
    serve.add_argument("--backend", choices=BACKENDS, help="inference backend (FOCUS_BACKEND)")
    serve.add_argument("--device", choices=("cpu", "cuda"), help="device (FOCUS_DEVICE)")
    serve.add_argument("--workers", type=int, help="uvicorn workers (FOCUS_WORKERS)")
    serve.add_argument("--log-level", help="log level (FOCUS_LOG_LEVEL)")
    serve.set_defaults(func=run_serve)

    segment = subparsers.add_parser(
        "segment",
        help="segment image files without a server",
        description="Segment an image file or every image in a folder (recursively) with the "
        "service's backends and processing, writing one mask per image.",
    )
    segment.add_argument("--task", required=True, help="task name or alias (e.g. camouflage, cod)")
    segment.add_argument("--input", required=True, type=Path, help="image file or folder")
    segment.add_argument("--output", required=True, type=Path, help="folder for the results")
    segment.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: grayscale mask; json: mask + statistics; rgba: cut-out; overlay: visual check",
    )
    segment.add_argument("--threshold", type=_unit_float, help="binarise the mask at this value")
    segment.add_argument("--backend", choices=BACKENDS, help="inference backend (FOCUS_BACKEND)")
    segment.add_argument("--device", choices=("cpu", "cuda"), help="device (FOCUS_DEVICE)")
    segment.add_argument(
        "--model-repository", type=Path, help="model repository (FOCUS_MODEL_REPOSITORY)"
    )
    segment.set_defaults(func=run_segment)


def _settings(args: argparse.Namespace, names: tuple[str, ...]) -> Any:
    """Settings from the environment, overridden by the options given on the command line."""
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SystemExit(f"focus {args.command_name}: invalid settings:\n{exc}") from None


def _configure_logging(level: str) -> None:
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------- serve


def run_serve(args: argparse.Namespace) -> int:
    args.command_name = "serve"
    names = ("host", "port", "model_repository", "backend", "device", "workers", "log_level")
    settings = _settings(args, names)
    _configure_logging(settings.log_level)

    from service.server import DrainingServer, uvicorn_config

    if settings.workers == 1:
        from service.app import create_app

        config = uvicorn_config(settings, create_app(settings))
        server = DrainingServer(config, drain_delay_s=settings.drain_delay_s)
        server.run()
        return 0 if server.started else 3
    # Several workers: each process builds its app from the environment, and metrics go
    # through prometheus-client's multiprocess mode (see service/metrics.py).
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"FOCUS_{name.upper()}"] = str(value)
    from service.metrics import MULTIPROC_ENV

    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="focus-metrics-")
    # uvicorn's supervisor builds each worker's server itself: the header timeout applies, the
    # drain delay does not (run one worker per container to get it; see the README).
    config = uvicorn_config(
        settings, "service.app:create_app_from_env", factory=True, workers=settings.workers
    )
    sock = config.bind_socket()
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[sock]).run()
    return 0


# ----------------------------------------------------------------------------------- segment


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _output_path(output: Path, relative: Path, fmt: str, taken: set[Path]) -> Path:
    suffix = ".json" if fmt == "json" else ".png"
    path = output / relative.with_suffix(suffix)
    if path in taken:  # a.jpg and a.png in one folder: keep both
        path = output / relative.with_name(f"{relative.stem}_{relative.suffix[1:]}{suffix}")
    taken.add(path)
    return path


def run_segment(args: argparse.Namespace) -> int:
    args.command_name = "segment"
    settings = _settings(args, ("backend", "device", "model_repository"))
    _configure_logging("warning")
    from tqdm import tqdm

    from models.repository import RepositoryError, scan_repository
    from models.tasks import UnknownTaskError, canonical_task
    from service.backends.factory import create_backend
    from service.imaging import ImageDecodeError, ImageTooLargeError
    from service.pipeline import (
        compute_mask,
        encode,
        json_result,
        limit_library_threads,
        needs_binary,
        prepare,
    )
    from service.schemas import Timing

    try:
        task = canonical_task(args.task)
        entries = scan_repository(settings.model_repository)
    except (UnknownTaskError, RepositoryError) as exc:
        print(f"focus segment: {exc}", file=sys.stderr)
        return 2
    if task not in entries:
        print(
            f"focus segment: no model for task {task!r} in {settings.model_repository}; "
            f"available: {', '.join(sorted(entries))}",
            file=sys.stderr,
        )
        return 2
    if args.input.is_dir():
        files = [(p, p.relative_to(args.input)) for p in _image_files(args.input)]
    elif args.input.is_file():
        files = [(args.input, Path(args.input.name))]
    else:
        print(f"focus segment: {args.input} does not exist", file=sys.stderr)
        return 2
    if not files:
        print(f"focus segment: no images in {args.input}", file=sys.stderr)
        return 2

    limit_library_threads()
    backend = create_backend(
        entries[task],
        backend=settings.backend,
        device=settings.device,
        require_gpu=settings.require_gpu,
        intra_op_threads=settings.intra_op_threads,
        engine_cache=settings.engine_cache,
    )
    fmt, threshold = args.format, args.threshold
    failures = 0
    taken: set[Path] = set()
    progress = tqdm(files, unit="img", disable=len(files) == 1, desc=task)
    try:
        for path, relative in progress:
            started = time.perf_counter()
            try:
                image = prepare(path.read_bytes(), backend.card, settings.max_pixels)
            except (ImageDecodeError, ImageTooLargeError, OSError) as exc:
                failures += 1
                progress.write(f"{path}: {exc}", file=sys.stderr)
                continue
            t_prep = time.perf_counter()
            class_probs, mask_logits = backend.infer(
                image.inputs.image[None], image.inputs.edges[None]
            )
            t_comp = time.perf_counter()
            result = compute_mask(
                class_probs[0], mask_logits[0], image, with_binary=needs_binary(fmt, threshold)
            )
            encoded = encode(fmt, image, result, threshold)
            done = time.perf_counter()
            out = _output_path(args.output, relative, fmt, taken)
            out.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "json":
                timing = Timing(
                    preprocess_ms=round((t_prep - started) * 1e3, 3),
                    queue_ms=0.0,
                    compute_ms=round((t_comp - t_prep) * 1e3, 3),
                    postprocess_ms=round((done - t_comp) * 1e3, 3),
                    total_ms=round((done - started) * 1e3, 3),
                    batch_size=1,
                )
                body = json_result(task, image, encoded, threshold, backend, timing,
                                   repository_version=entries[task].version)  # fmt: skip
                out.write_text(body.model_dump_json(indent=2) + "\n", encoding="utf-8")
            else:
                out.write_bytes(encoded.content)
    finally:
        progress.close()
        backend.close()
    written = len(files) - failures
    print(f"{written} of {len(files)} images segmented into {args.output}", file=sys.stderr)
    return 1 if failures else 0
