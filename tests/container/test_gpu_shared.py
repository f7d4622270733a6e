"""What the GPU image shares with the CPU image, run for real in the CPU image (issue 14).

The `gpu` target cannot be built here (no CUDA base images), but its entrypoint, health check,
model repository layout and engine-cache logic are the same files as in the `cpu` image. Here the
CPU image runs them with the GPU image's FOCUS_BACKEND=auto, read-only, with the engine cache a
named volume as in docker-compose.yml:

1. with stand-ins for `nvidia-smi`, the `tensorrt` module and `focus export tensorrt` (bind-mounted
   read-only, first on PATH): the entrypoint plans an engine for every bundled task from the real
   repository, builds each into the volume as uid 10001 where the service looks for it, and
2. on the next start finds them all and builds nothing;
3. without the stand-ins (a host without a GPU): it says so and the real service becomes ready
   and answers with ONNX Runtime.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from container_testing import ROOT, Podman, container, free_port, wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

CACHE = "/var/cache/focus/engines"
STAND_INS = {
    "bin/nvidia-smi": '#!/bin/sh\necho "GPU 0: stand-in GPU (UUID: GPU-0)"\n',
    # `focus export tensorrt` writes a marker engine (after checking the planned ONNX file is
    # real); `focus serve` stops there; anything else is the real CLI.
    "bin/focus": """#!/bin/sh
if [ "$1 $2" = "export tensorrt" ]; then
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in --onnx) onnx="$2" ;; --out) out="$2" ;; esac
        shift
    done
    [ -s "$onnx" ] || { echo "no ONNX at $onnx" >&2; exit 3; }
    echo "stand-in engine for $onnx" > "$out"
    exit 0
fi
[ "$1" = serve ] && { echo "stand-in serve" >&2; exit 0; }
exec /opt/venv/bin/focus "$@"
""",
    "py/tensorrt/__init__.py": "",
}
BUNDLED = sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/model.onnx"))


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stand-ins")
    for relative, text in STAND_INS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755)  # readable by uid 10001 inside
    return root


@pytest.fixture(scope="module")
def engine_volume(podman: Podman) -> Iterator[str]:
    name = f"focus-ct-engines-{time.monotonic_ns() % 10**8}"
    podman.run("volume", "create", name)
    yield name
    podman.run("volume", "rm", "--force", name, check=False)


def _start(podman: Podman, image: str, volume: str, stand_ins: Path) -> str:
    """The image's entrypoint and CMD (serve) as the GPU image runs them, with the stand-ins."""
    result = podman.run(
        "run", "--rm", "--read-only", f"--volume={volume}:{CACHE}",
        f"--volume={stand_ins}:/opt/stand-ins:ro",
        "--env=PATH=/opt/stand-ins/bin:/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
        "--env=PYTHONPATH=/opt/stand-ins/py", "--env=FOCUS_BACKEND=auto", image,
        timeout=300,
    )  # fmt: skip
    assert "stand-in serve" in result.stderr, result.stderr
    return result.stderr


def test_entrypoint_builds_every_engine_into_the_cache_volume(
    podman: Podman, cpu_image: str, engine_volume: str, stand_ins: Path
) -> None:
    log = _start(podman, cpu_image, engine_volume, stand_ins)
    assert log.count("building TensorRT engine") == len(BUNDLED) == log.count("engine ready"), log
    listing = podman.run(
        "run", "--rm", f"--volume={engine_volume}:/cache", "--entrypoint=sh", cpu_image, "-c",
        "cd /cache && find . -mindepth 1 | sort && stat -c %u */1/model.engine | sort -u",
    ).stdout.split()  # fmt: skip
    # <task>/<version>/model.engine, as models/contract.py's engine_cache_path and the TensorRT
    # backend have it; nothing half-built left behind; written by the service's user
    from models.contract import engine_cache_path

    expected = set()
    for task in BUNDLED:
        engine = engine_cache_path(".", task, 1)
        expected |= {f"./{task}", f"./{engine.parent.as_posix()}", f"./{engine.as_posix()}"}
    assert set(listing[:-1]) == expected, listing
    assert listing[-1] == "10001"


def test_entrypoint_builds_nothing_when_every_engine_is_cached(
    podman: Podman, cpu_image: str, engine_volume: str, stand_ins: Path
) -> None:
    log = _start(podman, cpu_image, engine_volume, stand_ins)
    assert "building TensorRT engine" not in log
    assert log.count("engine present at") == len(BUNDLED), log


def test_without_a_gpu_it_says_so_and_serves_on_the_cpu(
    podman: Podman, cpu_image: str, engine_volume: str, photos: dict[str, Path]
) -> None:
    port = free_port()
    with container(
        podman, "--read-only", f"--volume={engine_volume}:{CACHE}", "--env=FOCUS_BACKEND=auto",
        f"--publish=127.0.0.1:{port}:8000", cpu_image,
    ) as name:  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: httpx.get(f"{url}/health/ready", timeout=2).status_code == 200,
            120,
            "ready with FOCUS_BACKEND=auto",
            lambda: podman.run("logs", name, check=False).stderr[-4000:],
        )
        assert "no NVIDIA GPU visible" in podman.run("logs", name).stderr
        response = httpx.post(
            f"{url}/segment/{BUNDLED[0]}",
            content=photos["scene.png"].read_bytes(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        # auto on the CPU times the gated CPU variants (ONNX Runtime, OpenVINO) and keeps the
        # fastest, so either may win on a given start; never TensorRT or CUDA here
        assert response.headers["x-focus-backend"] in ("onnxruntime", "openvino")
        assert podman.run("healthcheck", "run", name, check=False).returncode == 0
