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
        "service's backends and processing, writing one mask per image. Results never replace "
        "an input file unless --overwrite; see the README for the output names.",
    )
    segment.add_argument("--task", required=True, help="task name or alias (e.g. camouflage, cod)")
    segment.add_argument("--input", required=True, type=Path, help="image file or folder")
    segment.add_argument(
        "--output",
        required=True,
        type=Path,
        help="folder for the results: <output>/<input name>.png (.json for --format json); "
        "for a single input file, a .png/.json path is used as is",
    )
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
    segment.add_argument(
        "--overwrite",
        action="store_true",
        help="allow a result to replace the input image it was made from (refused otherwise)",
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

EXIT_USAGE = 2  # bad arguments, nothing written


class _UsageError(Exception):
    """A ``focus segment`` argument that cannot work; exits 2 before anything is written."""


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _inputs(source: Path, output: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to --input) for every image to segment; a results folder inside
    the input folder (an earlier run's masks) is not an input."""
    if source.is_dir():
        skip = output.resolve()
        files = [
            (p, p.relative_to(source))
            for p in _image_files(source)
            if skip not in p.resolve().parents or skip == source.resolve()
        ]
    elif source.is_file():
        files = [(source, Path(source.name))]
    else:
        raise _UsageError(f"{source} does not exist")
    if not files:
        raise _UsageError(f"no images in {source}")
    return files


def _result_suffix(fmt: str) -> str:
    return ".json" if fmt == "json" else ".png"


def plan_outputs(
    files: list[tuple[Path, Path]],
    output: Path,
    fmt: str,
    *,
    file_input: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Where each input's result goes (README "Segment files without a server").

    ``<output>/<path relative to --input>`` with the suffix ``.png`` (``.json`` for json); for
    an input file (``file_input``), an ``--output`` ending in that suffix is the result's path.
    A name already taken by an earlier result, or by *another* input file, gets the input's
    extension added
    (``a.jpg`` and ``a.png`` -> ``a.png`` and ``a_png.png``; in the input folder itself,
    ``a_jpg.png``). A result that would replace its own input is refused unless ``overwrite``.
    """
    suffix = _result_suffix(fmt)
    if output.exists() and not output.is_dir() and output.suffix.lower() != suffix:
        raise _UsageError(f"--output {output} is a file; give a folder (or a {suffix} file)")
    as_file = file_input and output.suffix.lower() == suffix and not output.is_dir()
    inputs = {path.resolve(): path for path, _ in files}
    taken: set[Path] = set()
    planned: list[Path] = []
    for path, relative in files:
        if as_file:
            target = output
        else:
            target = output / relative.with_suffix(suffix)
        own = path.resolve()
        resolved = target.resolve()
        if resolved in taken or (resolved in inputs and resolved != own):
            target = target.with_name(f"{relative.stem}_{relative.suffix[1:]}{suffix}")
            resolved = target.resolve()
        if resolved == own and not overwrite:
            raise _UsageError(
                f"the result for {path} would replace that input file; choose another "
                "--output, or pass --overwrite to replace it"
            )
        taken.add(resolved)
        planned.append(target)
    return planned


def _repository_message(exc: Exception, repository: Path) -> str:
    return (
        f"{exc}. The model repository is {repository} (resolved from the current directory "
        f"{Path.cwd()}); choose one with --model-repository DIR or FOCUS_MODEL_REPOSITORY=DIR"
    )


def _segment_backend(settings: Any, task_name: str) -> tuple[Any, int]:
    """(backend, repository version) serving ``task_name`` from the settings' repository; usage
    errors as such."""
    from models.repository import RepositoryError, scan_repository
    from models.tasks import UnknownTaskError, canonical_task
    from service.backends.factory import create_backend

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
    backend = create_backend(
        entries[task],
        backend=settings.backend,
        device=settings.device,
        require_gpu=settings.require_gpu,
        intra_op_threads=settings.intra_op_threads,
        engine_cache=settings.engine_cache,
    )
    return backend, entries[task].version


def _write_result(
    out: Path, segmented: Any, options: Any, backend: Any, repository_version: int
) -> None:
    from service.pipeline import json_result

    out.parent.mkdir(parents=True, exist_ok=True)
    if options.fmt == "json":
        task = backend.card.task
        body = json_result(
            task,
            segmented.image,
            segmented.encoded,
            options.threshold,
            backend,
            segmented.timing,
            repository_version=repository_version,
        )
        out.write_text(body.model_dump_json(indent=2) + "\n", encoding="utf-8")
    else:
        out.write_bytes(segmented.encoded.content)


def run_segment(args: argparse.Namespace) -> int:
    args.command_name = "segment"
    settings = _settings(args, ("backend", "device", "model_repository"))
    _configure_logging("warning")
    try:
        files = _inputs(args.input, args.output)
        outputs = plan_outputs(
            files,
            args.output,
            args.format,
            file_input=args.input.is_file(),
            overwrite=args.overwrite,
        )
        backend, repository_version = _segment_backend(settings, args.task)
    except _UsageError as exc:
        print(f"focus segment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        failures = _segment_files(files, outputs, (backend, repository_version), args, settings)
    finally:
        backend.close()
    written = len(files) - failures
    print(f"{written} of {len(files)} images segmented into {args.output}", file=sys.stderr)
    return 1 if failures else 0


def _segment_files(
    files: list[tuple[Path, Path]],
    outputs: list[Path],
    model: tuple[Any, int],
    args: Any,
    settings: Any,
) -> int:
    """Run :func:`service.pipeline.segment_bytes` on each file with ``model`` (backend,
    repository version); returns the failures."""
    import asyncio

    from tqdm import tqdm

    from service.imaging import ImageDecodeError, ImageTooLargeError
    from service.pipeline import Inference, SegmentOptions, limit_library_threads, segment_bytes

    backend, repository_version = model

    async def infer(image: Any) -> Inference:
        started = time.perf_counter()
        probs, logits = backend.infer(image.inputs.image[None], image.inputs.edges[None])
        return Inference(probs[0], logits[0], compute_s=time.perf_counter() - started)

    limit_library_threads()
    options = SegmentOptions(fmt=args.format, threshold=args.threshold)
    failures = 0
    pairs = list(zip(files, outputs, strict=True))
    progress = tqdm(pairs, unit="img", disable=len(files) == 1, desc=backend.card.task)
    loop = asyncio.new_event_loop()  # one loop for every file (asyncio.Runner is 3.11+)
    try:
        for (path, _), out in progress:
            try:
                segmented = loop.run_until_complete(
                    segment_bytes(
                        path.read_bytes(),
                        backend.card,
                        options,
                        infer=infer,
                        max_pixels=settings.max_pixels,
                    )
                )
            except (ImageDecodeError, ImageTooLargeError, OSError) as exc:
                failures += 1
                progress.write(f"{path}: {exc}", file=sys.stderr)
                continue
            _write_result(out, segmented, options, backend, repository_version)
    finally:
        loop.close()
    progress.close()
    return failures
