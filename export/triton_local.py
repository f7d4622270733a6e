"""A real ``tritonserver`` on this machine, from the ``nvidia-pytriton`` wheel (no container).

The wheel (PyPI, Linux x86_64, glibc >= 2.35) ships Triton 2.51 with the Python backend, the
dynamic batcher, the response cache and the ``nv_*`` metrics, but no ONNX Runtime or TensorRT
backend: it serves the ``--model-backend python-onnxruntime`` export. Everything is cached
under ``$XDG_CACHE_HOME/focus-triton`` (default ``~/.cache/focus-triton``), keyed by versions,
so only the first use downloads (~55 MB wheel, ~300 MB of packages):

* ``pytriton-<version>-py<X.Y>/``: the server unpacked from the wheel (not pip-installed: the
  wheel pins ``numpy<2``), with the Python backend stub for this interpreter's version;
* ``stub-packages-py<X.Y>-<hash>/``: numpy, Pillow, OpenCV and ONNX Runtime installed with
  ``pip install --target`` for the stub's interpreter. The stub embeds the ``libpython`` of the
  interpreter running this module and ignores ``PYTHONPATH``, so the exported models put this
  directory on ``sys.path`` themselves (``--python-path``). numpy stays below 2: the stub's
  tensor bindings were built against numpy 1 and read numpy 2 arrays wrongly (measured: an
  FP32 input [1.5, 2.5] arrived as [1.5, 1.5]); OpenCV 4.11 is the last release for numpy 1.

    python -m export.triton_local install           # prints the packages directory
    python -m export.triton_local serve --model-repository triton_repo [--http-port 8000]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PYTRITON_VERSION = "0.7.0"
_SERVER_MEMBERS = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")
_SERVER_DIR = "pytriton/tritonserver"


class TritonUnavailableError(RuntimeError):
    """The local tritonserver cannot be installed or run on this machine; says why."""


@dataclass(frozen=True)
class TritonInstall:
    """An unpacked server plus the packages its Python backend stub imports."""

    root: Path  # the unpacked wheel
    python_version: str  # "3.11": the stub and the packages are for this interpreter
    libdir: str  # where the stub's libpython<version>.so.1.0 lives
    packages: Path  # pip --target directory for the stub

    @property
    def server(self) -> Path:
        return self.root / _SERVER_DIR

    @property
    def executable(self) -> Path:
        return self.server / "bin" / "tritonserver"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/focus-triton``, by default ``~/.cache/focus-triton``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "focus-triton"


def stub_requirements() -> tuple[str, ...]:
    """What the Python models import, for the stub's interpreter.

    Pillow and ONNX Runtime are pinned to this environment's versions (the service's resize
    and network runtime, so masks agree with ``focus segment``); numpy and OpenCV to the last
    releases for numpy 1 (see the module docstring).
    """
    pinned = []
    for dist in ("pillow", "onnxruntime"):
        try:
            pinned.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(dist)
    return ("numpy==1.26.4", "opencv-python-headless==4.11.0.86", *pinned)


def _stub_python() -> tuple[str, str]:
    """(X.Y, LIBDIR) of this interpreter, whose shared libpython the stub will load."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    soname = f"libpython{version}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and (Path(libdir) / soname).is_file():
        return version, libdir
    if ctypes.util.find_library(f"python{version}"):
        return version, ""  # on the loader's default path (e.g. Debian's libpython3.11)
    raise TritonUnavailableError(
        f"the Python backend stub needs {soname}, which this interpreter ({sys.executable}) "
        "does not provide (a statically linked Python); install libpython or use a shared build"
    )


def _pip(args: Sequence[str], what: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonUnavailableError(f"{what}: {exc}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise TritonUnavailableError(f"{what} failed (pip exit {result.returncode}): {tail}")


def _cached_dir(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built once through a hidden staging directory and one rename."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    try:
        staging.mkdir()
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent builder's win: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download_wheel(cache: Path) -> Path:
    def build(staging: Path) -> None:
        _pip(
            [
                "download",
                "--no-deps",
                "-q",
                f"nvidia-pytriton=={PYTRITON_VERSION}",
                "-d",
                str(staging),
            ],
            f"downloading nvidia-pytriton {PYTRITON_VERSION}",
        )

    wheels = sorted(_cached_dir(cache / f"wheel-{PYTRITON_VERSION}", build).glob("*.whl"))
    if not wheels:
        raise TritonUnavailableError(f"no nvidia-pytriton wheel in {cache}")
    return wheels[0]


def _unpack_server(wheel: Path, version: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.filename.startswith(_SERVER_MEMBERS) and not member.is_dir():
                archive.extract(member, target)
                mode = (member.external_attr >> 16) & 0o777
                os.chmod(target / member.filename, mode or 0o644)
    server = target / _SERVER_DIR
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailableError(
            f"nvidia-pytriton {PYTRITON_VERSION} has no stub for {version}"
        )
    shutil.copyfile(stub, server / "backends" / "python" / stub.name)
    for binary in (server / "bin" / "tritonserver", server / "backends" / "python" / stub.name):
        binary.chmod(0o755)


def install(cache: Path | None = None) -> TritonInstall:
    """Download, unpack and provision (once) the server and the stub's packages."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise TritonUnavailableError(
            f"the nvidia-pytriton wheel is for Linux x86_64, not {platform.system()} "
            f"{platform.machine()}"
        )
    cache = cache or cache_root()
    version, libdir = _stub_python()
    wheel = _download_wheel(cache)
    root = _cached_dir(
        cache / f"pytriton-{PYTRITON_VERSION}-py{version}",
        lambda staging: _unpack_server(wheel, version, staging),
    )
    requirements = stub_requirements()
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]

    def provision(staging: Path) -> None:
        _pip(
            [
                "install",
                "-q",
                "--no-warn-conflicts",
                "--target",
                str(staging),
                "--python-version",
                version,
                "--implementation",
                "cp",
                "--only-binary=:all:",
                *requirements,
            ],
            f"installing {' '.join(requirements)} for the Python {version} stub",
        )

    packages = _cached_dir(cache / f"stub-packages-py{version}-{key}", provision)
    result = TritonInstall(root=root, python_version=version, libdir=libdir, packages=packages)
    _check_runs(result)
    return result


def _environment(found: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    if found.libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (found.libdir, env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def _check_runs(found: TritonInstall) -> None:
    """The binary loads here (glibc, libraries); ``--help`` exits 1 after printing usage."""
    try:
        result = subprocess.run(
            [str(found.executable), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(found),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonUnavailableError(f"{found.executable} does not run here: {exc}") from None
    if "--model-repository" not in result.stdout + result.stderr:
        tail = (result.stderr or result.stdout).strip()[-400:]
        raise TritonUnavailableError(f"{found.executable} does not run here: {tail}")


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _temporary_log() -> Path:
    fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
    os.close(fd)
    return Path(name)


class LocalTritonServer:
    """``tritonserver`` on loopback over ``repository``; a context manager.

    ``start`` returns once ``/v2/health/ready`` answers 200 (every model loaded) and raises
    ``RuntimeError`` with the end of the server's log when it exits or times out first.
    """

    def __init__(
        self,
        found: TritonInstall,
        repository: Path,
        *,
        ports: tuple[int, int, int] | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.found = found
        self.repository = Path(repository)
        self.http_port, self.grpc_port, self.metrics_port = ports or _free_ports(3)
        self.extra_args = tuple(extra_args)
        self.log_path = log_path or _temporary_log()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        server = self.found.server
        return [
            str(self.found.executable),
            f"--model-repository={self.repository}",
            f"--backend-directory={server / 'backends'}",
            f"--cache-directory={server / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if not line.startswith(("|", "+"))]
        return "\n".join(kept[-lines:])

    def start(self, timeout_s: float = 300.0) -> LocalTritonServer:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(self.found),
                start_new_session=True,  # its own process group: stop() ends the stubs too
            )
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> LocalTritonServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(repository: Path, **kwargs: object) -> Iterator[LocalTritonServer]:
    """Install (cached) and run a local server over ``repository`` for a ``with`` block."""
    server = LocalTritonServer(install(), repository, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.triton_local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="download and unpack (cached); print the packages directory")
    serve = sub.add_parser("serve", help="run tritonserver on loopback until interrupted")
    serve.add_argument("--model-repository", type=Path, required=True)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        found = install()
    except TritonUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.command == "install":
        print(found.packages)
        return 0
    if not args.model_repository.is_dir():
        print(f"error: {args.model_repository} is not a directory", file=sys.stderr)
        return 2
    server = LocalTritonServer(
        found,
        args.model_repository,
        ports=(args.http_port, args.grpc_port, args.metrics_port),
    )
    try:
        server.start()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"tritonserver ready: HTTP {server.http_url}, gRPC 127.0.0.1:{server.grpc_port}, "
        f"metrics {server.metrics_url}; log {server.log_path}; Ctrl-C stops it"
    )
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
