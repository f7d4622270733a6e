"""Fixtures of the container tests (`make container-test`): podman, the local base, the images.

Every podman call goes through :class:`Podman`, with ``CONTAINERS_CONF`` pointing at
deploy/local/containers.conf unless the caller set one (runc, explicit ulimits, netavark: what
our CI machines need). The images are built from this checkout by deploy/local/build.sh, so the
tests exercise whatever code the checkout holds; podman's layer cache and the base image's key
make a second run cheap. The time of each step and the image sizes are printed at the end of
the run (pytest's terminal summary).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from container_testing import LOCAL, REPORT, Podman, Report
from PIL import Image, ImageDraw

BUILD_TIMEOUT_S = 1800  # a cold base + build on two busy cores takes minutes, not half an hour


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT.lines:
        terminalreporter.section("container timings and sizes")
        for name, value in REPORT.lines.items():
            terminalreporter.write_line(f"{name:<40} {value}")


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman that can run a container here, or a skip saying why not."""
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip("podman is not installed (`make container-test` installs it with apt as root)")
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(LOCAL / "containers.conf"))
    tool = Podman(binary, env)
    info = tool.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (needed for the local base image)")
    return tool


@pytest.fixture(scope="session")
def base_image(podman: Podman, report: Report) -> str:
    """The local Debian base (deploy/local/base.sh); skips if a container cannot start on it."""
    started = time.monotonic()
    image = podman.script("base.sh", timeout=BUILD_TIMEOUT_S)
    report.add("base image (debootstrap + import)", f"{time.monotonic() - started:.0f} s ({image})")
    probe = podman.run("run", "--rm", image, "true", check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start a container here: {probe.stderr.strip()[-500:]}")
    return image


def image_size_mb(podman: Podman, image: str) -> float:
    size = podman.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
    return int(size) / 1e6


@pytest.fixture(scope="session")
def cpu_image(podman: Podman, base_image: str, report: Report) -> str:
    """The Dockerfile's `cpu` target built from this checkout on the local base."""
    started = time.monotonic()
    image = podman.script("build.sh", "cpu", timeout=BUILD_TIMEOUT_S)
    report.add("build cpu target", f"{time.monotonic() - started:.0f} s")
    report.add("cpu image size", f"{image_size_mb(podman, image):.0f} MB")
    report.add("  of which the base image", f"{image_size_mb(podman, base_image):.0f} MB")
    return image


@pytest.fixture(scope="session")
def prometheus_image(podman: Podman, base_image: str, report: Report) -> str:
    started = time.monotonic()
    image = podman.script("build.sh", "prometheus", timeout=BUILD_TIMEOUT_S)
    report.add("build prometheus image", f"{time.monotonic() - started:.0f} s")
    return image


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PNG and a JPEG photo-like image (textured background, objects), of different sizes."""
    directory = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    paths = {}
    for name, (width, height) in {"scene.png": (333, 250), "scene.jpg": (480, 360)}.items():
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 0.4, yy * 0.5, (xx + yy) * 0.2], axis=-1) % 256
        noise = rng.normal(0, 18, size=(height, width, 3))
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        draw.ellipse((width * 0.3, height * 0.25, width * 0.7, height * 0.8), fill=(40, 160, 70))
        draw.rectangle((10, 10, width // 5, height // 4), fill=(220, 200, 30))
        buffer = io.BytesIO()
        image.save(buffer, "PNG" if name.endswith(".png") else "JPEG", quality=90)
        (directory / name).write_bytes(buffer.getvalue())
        paths[name] = directory / name
    return paths
