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
FORMATS = ("png", "json", "rgba", "overlay", "webp")
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
        "service's backends and processing, writing one mask per image. Videos give a mask "
        "video (same frame count, size and rate); animated GIF/WebP/APNG one mask per frame.",
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
    _add_refinement_arguments(segment)
    segment.add_argument("--backend", choices=BACKENDS, help="inference backend (FOCUS_BACKEND)")
    segment.add_argument("--device", choices=("cpu", "cuda"), help="device (FOCUS_DEVICE)")
    segment.add_argument(
        "--model-repository", type=Path, help="model repository (FOCUS_MODEL_REPOSITORY)"
    )
    segment.set_defaults(func=run_segment)


def _add_refinement_arguments(segment: Any) -> None:
    """The full-resolution options (as ``/segment``'s query parameters) and video output."""
    segment.add_argument(
        "--refine", choices=("none", "guided"), default="none",
        help="guided: edge-aware upsampling of the mask (as refine=guided on /segment)",
    )  # fmt: skip
    segment.add_argument(
        "--zoom", choices=("off", "auto"), default="off",
        help="auto: second pass on a crop around a small object (salient, camouflage)",
    )  # fmt: skip
    segment.add_argument(
        "--decontaminate", action="store_true",
        help="with --format rgba: estimate foreground colours at the edge (no halo)",
    )  # fmt: skip
    segment.add_argument(
        "--encoding", choices=("png", "webp", "jpeg"),
        help="png (default), webp (lossless) or jpeg (overlay only)",
    )  # fmt: skip
    segment.add_argument(
        "--video-codec", choices=("ffv1", "mp4v"), default="ffv1",
        help="mask/overlay video: ffv1 = lossless .mkv (default), mp4v = lossy .mp4 that plays "
        "everywhere; --format rgba writes a PNG/WebP sequence instead (no alpha in video)",
    )  # fmt: skip
    segment.add_argument(
        "--batch", type=int, default=8, help="video/animation frames per backend call"
    )


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


def _image_files(root: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _output_path(
    output: Path, relative: Path, fmt: str, taken: set[Path], encoding: str | None = None
) -> Path:
    suffix = ".json" if fmt == "json" else {"webp": ".webp", "jpeg": ".jpg"}.get(
        encoding or ("webp" if fmt == "webp" else "png"), ".png"
    )
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
    from service.refinement import OptionError, Options, check_options, refine_with_backend
    from service.schemas import Timing
    from service.video import VIDEO_SUFFIXES

    try:
        task = canonical_task(args.task)
        entries = scan_repository(settings.model_repository)
        options = check_options(task, args.format, Options(
            refine=args.refine, zoom=args.zoom, decontaminate=args.decontaminate,
            encoding=args.encoding,
        ))  # fmt: skip
    except (UnknownTaskError, RepositoryError, OptionError) as exc:
        print(f"focus segment: {exc}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"focus segment: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    if task not in entries:
        print(
            f"focus segment: no model for task {task!r} in {settings.model_repository}; "
            f"available: {', '.join(sorted(entries))}",
            file=sys.stderr,
        )
        return 2
    if args.input.is_dir():
        media = IMAGE_SUFFIXES + VIDEO_SUFFIXES
        files = [(p, p.relative_to(args.input)) for p in _image_files(args.input, media)]
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
            handled = _segment_media(path, relative, args, backend, options, settings, progress)
            if handled is not None:  # a video or an animation: frames, not one image
                failures += handled
                continue
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
            first = compute_mask(
                class_probs[0], mask_logits[0], image,
                with_binary=needs_binary(fmt, threshold) and not options.changes_mask,
            )  # fmt: skip
            result, info = refine_with_backend(backend, image, first, options)
            encoded = encode(fmt, image, result, threshold, encoding=options.encoding,
                             decontaminate=options.decontaminate)  # fmt: skip
            done = time.perf_counter()
            out = _output_path(args.output, relative, fmt, taken, options.encoding)
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
                                   repository_version=entries[task].version,
                                   refinement=info)  # fmt: skip
                out.write_text(body.model_dump_json(indent=2) + "\n", encoding="utf-8")
            else:
                out.write_bytes(encoded.content)
    finally:
        progress.close()
        backend.close()
    written = len(files) - failures
    print(f"{written} of {len(files)} images segmented into {args.output}", file=sys.stderr)
    return 1 if failures else 0


def _segment_media(
    path: Path,
    relative: Path,
    args: argparse.Namespace,
    backend: Any,
    options: Any,
    settings: Any,
    outer: Any,
) -> int | None:
    """Segment a video or an animated image frame by frame (``service.video``).

    Returns None for a still image (the caller segments it), else the failure count (0 or 1):
    an unreadable or unsupported file is reported and the run goes on.
    """
    from tqdm import tqdm

    from service.imaging import ImageTooLargeError
    from service.pipeline import json_result
    from service.schemas import Timing
    from service.video import (
        MediaError,
        animated_frame_count,
        is_video,
        segment_animation,
        segment_video,
        video_output,
    )

    video = is_video(path)
    if not video and animated_frame_count(path) <= 1:
        return None
    fmt, threshold = args.format, args.threshold
    bar = tqdm(unit="frame", desc=path.name, leave=False)

    def progress(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(1)

    def render_json(image: Any, encoded: Any, info: Any) -> str:
        timing = Timing(preprocess_ms=0.0, queue_ms=0.0, compute_ms=0.0, postprocess_ms=0.0,
                        total_ms=0.0, batch_size=1)  # fmt: skip
        body = json_result(backend.card.task, image, encoded, threshold, backend, timing,
                           refinement=info)  # fmt: skip
        return body.model_dump_json(indent=2) + "\n"

    try:
        if video:
            target = video_output(args.output, relative, fmt, args.video_codec)
            frames = segment_video(
                path, target, backend, fmt=fmt, threshold=threshold, options=options,
                batch=args.batch, codec=args.video_codec, progress=progress,
            )  # fmt: skip
        else:
            target = args.output / relative.with_suffix("")
            frames = segment_animation(
                path, target, backend, fmt=fmt, threshold=threshold, options=options,
                max_pixels=settings.max_pixels, batch=args.batch, render_json=render_json,
                progress=progress,
            )  # fmt: skip
    except (MediaError, ImageTooLargeError, OSError) as exc:
        outer.write(f"{path}: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    outer.write(f"{path}: {frames} frames -> {target}", file=sys.stderr)
    return 0
