"""export.triton_local without a server: the cache is built once, atomically, and the stub's
packages are pinned the way the module docstring says (the served test is
tests/export/test_triton_server.py)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from export.triton_local import LocalTritonServer, TritonInstall, _cached_dir, stub_requirements


def test_cached_dir_builds_once(tmp_path: Path) -> None:
    calls = []

    def build(staging: Path) -> None:
        calls.append(staging)
        (staging / "payload").write_text("x")

    target = tmp_path / "cache" / "thing"
    assert _cached_dir(target, build) == target
    assert _cached_dir(target, build) == target
    assert len(calls) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["thing"]  # no staging left
    assert (target / "payload").read_text() == "x"


def test_cached_dir_leaves_nothing_when_the_build_fails(tmp_path: Path) -> None:
    def build(staging: Path) -> None:
        (staging / "half").write_text("x")
        raise RuntimeError("download failed")

    with pytest.raises(RuntimeError, match="download failed"):
        _cached_dir(tmp_path / "cache" / "thing", build)
    assert list((tmp_path / "cache").iterdir()) == []


def test_stub_packages_keep_numpy_1_and_this_environments_pillow_and_onnxruntime() -> None:
    assert stub_requirements() == (
        "numpy==1.26.4",
        "opencv-python-headless==4.11.0.86",
        f"pillow=={importlib.metadata.version('pillow')}",
        f"onnxruntime=={importlib.metadata.version('onnxruntime')}",
    )


def test_server_command_binds_loopback_only(tmp_path: Path) -> None:
    found = TritonInstall(
        root=tmp_path / "w", python_version="3.11", libdir="", packages=tmp_path / "p"
    )
    server = LocalTritonServer(found, tmp_path / "repo", ports=(1, 2, 3), log_path=tmp_path / "l")
    server_dir = tmp_path / "w" / "pytriton" / "tritonserver"
    assert server.command() == [
        str(server_dir / "bin" / "tritonserver"),
        f"--model-repository={tmp_path / 'repo'}",
        f"--backend-directory={server_dir / 'backends'}",
        f"--cache-directory={server_dir / 'caches'}",
        "--http-address=127.0.0.1",
        "--http-port=1",
        "--grpc-address=127.0.0.1",
        "--grpc-port=2",
        "--metrics-address=127.0.0.1",
        "--metrics-port=3",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=10",
    ]
    assert (server.http_url, server.metrics_url) == ("127.0.0.1:1", "http://127.0.0.1:3/metrics")
