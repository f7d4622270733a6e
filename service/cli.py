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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FORMATS = ("png", "json", "rgba", "overlay", "webp")
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")


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
        "video (same frame count, size and rate); animated GIF/WebP/APNG one mask per frame. "
        "Results never replace an input file unless --overwrite; see the README for the "
        "output names.",
    )
    segment.add_argument("--task", required=True, help="task name or alias (e.g. camouflage, cod)")
    segment.add_argument(
        "--input", required=True, type=Path, help="image or video file, or a folder of them"
    )
    segment.add_argument(
        "--output",
        required=True,
        type=Path,
        help="folder for the results: <output>/<input name>.png (.json for --format json, "
        ".webp/.jpg with those encodings, .mkv/.mp4 for a video, a folder of frames for an "
        "animation); for a single input file, a path with that suffix is used as is",
    )
    segment.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: grayscale mask; json: mask + statistics; rgba: cut-out; overlay: visual check",
    )
    segment.add_argument("--threshold", type=_unit_float, help="binarise the mask at this value")
    _add_refinement_arguments(segment)
    segment.add_argument("--backend", choices=BACKENDS, help="inference backend (FOCUS_BACKEND)")
    segment.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        help="precision variant (FOCUS_PRECISION); a variant's accuracy gate must have passed",
    )
    segment.add_argument("--device", choices=("cpu", "cuda"), help="device (FOCUS_DEVICE)")
    segment.add_argument(
        "--model-repository", type=Path, help="model repository (FOCUS_MODEL_REPOSITORY)"
    )
    segment.add_argument(
        "--overwrite",
        action="store_true",
        help="allow a result to replace the input image it was made from (refused otherwise)",
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

EXIT_USAGE = 2  # bad arguments, nothing written
IMAGE, VIDEO, ANIMATION = "image", "video", "animation"  # how an input file is segmented


class _UsageError(Exception):
    """A ``focus segment`` argument that cannot work; exits 2 before anything is written."""


@dataclass(frozen=True)
class _Job:
    path: Path  # the input file
    out: Path  # its result: a file, or a folder of frames
    kind: str  # IMAGE, VIDEO or ANIMATION


def _image_files(root: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _segment_options(args: argparse.Namespace) -> Any:
    """The request options (as ``/segment``'s query parameters), refused as usage errors the
    way the route answers 422 (``service.refinement.check_options``)."""
    from models.tasks import UnknownTaskError, canonical_task
    from service.pipeline import SegmentOptions
    from service.refinement import OptionError, check_options

    if args.batch < 1:
        raise _UsageError(f"--batch must be >= 1, got {args.batch}")
    try:
        task = canonical_task(args.task)
        options = SegmentOptions(fmt=args.format, threshold=args.threshold, refine=args.refine,
                                 zoom=args.zoom, decontaminate=args.decontaminate,
                                 encoding=args.encoding)  # fmt: skip
        return check_options(task, options)
    except (UnknownTaskError, OptionError) as exc:
        raise _UsageError(str(exc)) from None


def _inputs(source: Path, output: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to --input) for every image or video to segment; a results folder
    inside the input folder (an earlier run's masks) is not an input."""
    from service.video import VIDEO_SUFFIXES

    if source.is_dir():
        skip = output.resolve()
        files = [
            (p, p.relative_to(source))
            for p in _image_files(source, IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if skip not in p.resolve().parents or skip == source.resolve()
        ]
    elif source.is_file():
        files = [(source, Path(source.name))]
    else:
        raise _UsageError(f"{source} does not exist")
    if not files:
        raise _UsageError(f"no images in {source}")
    return files


def _media_kind(path: Path) -> str:
    from service.video import animated_frame_count, is_video

    if is_video(path):
        return VIDEO
    return ANIMATION if animated_frame_count(path) > 1 else IMAGE


def _result_suffix(kind: str, options: Any, codec: str) -> str:
    """The result's suffix; "" for a folder of frames (an animation, a cut-out video)."""
    from service.video import VIDEO_CODECS

    if kind == ANIMATION or (kind == VIDEO and options.fmt == "rgba"):
        return ""
    if kind == VIDEO:
        return VIDEO_CODECS[codec][1]
    if options.fmt == "json":
        return ".json"
    return {"webp": ".webp", "jpeg": ".jpg"}.get(options.encoding, ".png")


def plan_outputs(
    files: list[tuple[Path, Path]],
    output: Path,
    suffixes: list[str],
    *,
    file_input: bool = False,
    overwrite: bool = False,
    streamed: frozenset[Path] = frozenset(),
) -> list[Path]:
    """Where each input's result goes (README "Segment files without a server").

    ``<output>/<path relative to --input>`` with the input's suffix in ``suffixes`` (``.png``,
    ``.json``, ``.webp``, ``.jpg``, ``.mkv``/``.mp4`` for a mask video; "" for a folder of
    frames); for an input file (``file_input``), an ``--output`` ending in that suffix is the
    result's path. A name already taken by an earlier result, or by *another* input file, gets
    the input's extension added (``a.jpg`` and ``a.png`` -> ``a.png`` and ``a_png.png``; in the
    input folder itself, ``a_jpg.png``). A result that would replace its own input is refused
    unless ``overwrite``, and always for the ``streamed`` inputs (videos: read while written).
    """
    first = suffixes[0] if file_input else ""
    if output.exists() and not output.is_dir() and (not first or output.suffix.lower() != first):
        also = f" (or a {first} file)" if first else ""
        raise _UsageError(f"--output {output} is a file; give a folder{also}")
    as_file = bool(first) and output.suffix.lower() == first and not output.is_dir()
    inputs = {path.resolve(): path for path, _ in files}
    taken: set[Path] = set()
    planned: list[Path] = []
    for (path, relative), suffix in zip(files, suffixes, strict=True):
        target = output if as_file else output / relative.with_suffix(suffix)
        own = path.resolve()
        resolved = target.resolve()
        if resolved in taken or (resolved in inputs and resolved != own):
            target = target.with_name(f"{relative.stem}_{relative.suffix[1:]}{suffix}")
            resolved = target.resolve()
        if resolved == own and (not overwrite or path in streamed):
            how = "" if path in streamed else ", or pass --overwrite to replace it"
            raise _UsageError(
                f"the result for {path} would replace that input file; choose another "
                f"--output{how}"
            )
        taken.add(resolved)
        planned.append(target)
    return planned


def _plan(files: list[tuple[Path, Path]], args: argparse.Namespace, options: Any) -> list[_Job]:
    kinds = [_media_kind(path) for path, _ in files]
    outputs = plan_outputs(
        files,
        args.output,
        [_result_suffix(kind, options, args.video_codec) for kind in kinds],
        file_input=args.input.is_file(),
        overwrite=args.overwrite,
        streamed=frozenset(p for (p, _), kind in zip(files, kinds, strict=True) if kind == VIDEO),
    )
    return [
        _Job(path, out, kind) for (path, _), out, kind in zip(files, outputs, kinds, strict=True)
    ]


def _repository_message(exc: Exception, repository: Path) -> str:
    return (
        f"{exc}. The model repository is {repository} (resolved from the current directory "
        f"{Path.cwd()}); choose one with --model-repository DIR or FOCUS_MODEL_REPOSITORY=DIR"
    )


def _segment_backend(settings: Any, task_name: str) -> tuple[Any, int]:
    """(backend, repository version) serving ``task_name`` from the settings' repository; usage
    errors as such."""
    from models.contract import BackendUnavailableError
    from models.precision import GateRefusedError
    from models.repository import RepositoryError, scan_repository
    from models.tasks import UnknownTaskError, canonical_task
    from service.backends.factory import create_backend_from_settings

    try:
        task = canonical_task(task_name)
    except UnknownTaskError as exc:
        raise _UsageError(str(exc)) from None
    try:
        entries = scan_repository(settings.model_repository)
    except RepositoryError as exc:
        raise _UsageError(_repository_message(exc, settings.model_repository)) from None
    if task not in entries:
        raise _UsageError(
            f"no model for task {task!r} in {settings.model_repository}; available: "
            f"{', '.join(sorted(entries)) or 'none'} (choose the repository with "
            "--model-repository or FOCUS_MODEL_REPOSITORY)"
        )
    try:
        backend = create_backend_from_settings(
            entries[task], settings, threads=settings.intra_op_threads
        )
    except (BackendUnavailableError, GateRefusedError) as exc:
        raise _UsageError(str(exc)) from None
    return backend, entries[task].version


def _json_text(segmented: Any, options: Any, backend: Any, repository_version: int) -> str:
    """What ``--format json`` writes for an image (or a frame): ``/segment``'s JSON body."""
    from service.pipeline import json_result

    body = json_result(
        backend.card.task,
        segmented.image,
        segmented.encoded,
        options.threshold,
        backend,
        segmented.timing,
        repository_version=repository_version,
        refinement=segmented.refinement,
    )
    return body.model_dump_json(indent=2) + "\n"


def _write_result(
    out: Path, segmented: Any, options: Any, backend: Any, repository_version: int
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if options.fmt == "json":
        text = _json_text(segmented, options, backend, repository_version)
        out.write_text(text, encoding="utf-8")
    else:
        out.write_bytes(segmented.encoded.content)


def run_segment(args: argparse.Namespace) -> int:
    args.command_name = "segment"
    settings = _settings(args, ("backend", "precision", "device", "model_repository"))
    _configure_logging("warning")
    try:
        options = _segment_options(args)
        jobs = _plan(_inputs(args.input, args.output), args, options)
        backend, repository_version = _segment_backend(settings, args.task)
    except _UsageError as exc:
        print(f"focus segment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        failures = _segment_files(jobs, options, (backend, repository_version), args, settings)
    finally:
        backend.close()
    written = len(jobs) - failures
    print(f"{written} of {len(jobs)} images segmented into {args.output}", file=sys.stderr)
    return 1 if failures else 0


def _segment_files(
    jobs: list[_Job],
    options: Any,
    model: tuple[Any, int],
    args: Any,
    settings: Any,
) -> int:
    """Run :func:`service.pipeline.segment_bytes` on each image (videos and animations: frame
    by frame, ``_segment_media``) with ``model`` (backend, repository version); returns the
    failures."""
    import asyncio

    from tqdm import tqdm

    from service.imaging import ImageDecodeError, ImageTooLargeError
    from service.pipeline import Inference, limit_library_threads, segment_bytes

    backend, repository_version = model

    async def infer(image: Any) -> Inference:
        started = time.perf_counter()
        probs, logits = backend.infer(image.inputs.image[None], image.inputs.edges[None])
        return Inference(probs[0], logits[0], compute_s=time.perf_counter() - started)

    limit_library_threads()
    failures = 0
    progress = tqdm(jobs, unit="img", disable=len(jobs) == 1, desc=backend.card.task)
    loop = asyncio.new_event_loop()  # one loop for every file (asyncio.Runner is 3.11+)
    try:
        for job in progress:
            if job.kind != IMAGE:
                failures += _segment_media(job, options, model, args, settings, progress)
                continue
            try:
                segmented = loop.run_until_complete(
                    segment_bytes(
                        job.path.read_bytes(),
                        backend.card,
                        options,
                        infer=infer,
                        max_pixels=settings.max_pixels,
                    )
                )
            except (ImageDecodeError, ImageTooLargeError, OSError) as exc:
                failures += 1
                progress.write(f"{job.path}: {exc}", file=sys.stderr)
                continue
            _write_result(job.out, segmented, options, backend, repository_version)
    finally:
        loop.close()
    progress.close()
    return failures


def _segment_media(
    job: _Job, options: Any, model: tuple[Any, int], args: Any, settings: Any, outer: Any
) -> int:
    """Segment a video or an animated image frame by frame (``service.video``) into ``job.out``.

    Returns the failure count (0 or 1): an unreadable or unsupported file is reported and the
    run goes on.
    """
    from tqdm import tqdm

    from service.imaging import ImageTooLargeError
    from service.pipeline import Segmented
    from service.schemas import Timing
    from service.video import MediaError, segment_animation, segment_video

    backend, repository_version = model
    bar = tqdm(unit="frame", desc=job.path.name, leave=False)

    def progress(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(1)

    def render_json(image: Any, encoded: Any, info: Any) -> str:
        timing = Timing(preprocess_ms=0.0, queue_ms=0.0, compute_ms=0.0, postprocess_ms=0.0,
                        total_ms=0.0, batch_size=1)  # fmt: skip
        frame = Segmented(image=image, encoded=encoded, timing=timing, refinement=info)
        return _json_text(frame, options, backend, repository_version)

    try:
        if job.kind == VIDEO:
            frames = segment_video(
                job.path, job.out, backend, options, batch=args.batch, codec=args.video_codec,
                progress=progress,
            )  # fmt: skip
        else:
            frames = segment_animation(
                job.path, job.out, backend, options, max_pixels=settings.max_pixels,
                batch=args.batch, render_json=render_json, progress=progress,
            )  # fmt: skip
    except (MediaError, ImageTooLargeError, OSError) as exc:
        outer.write(f"{job.path}: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    outer.write(f"{job.path}: {frames} frames -> {job.out}", file=sys.stderr)
    return 0
