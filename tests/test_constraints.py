"""One set of dependency versions: ``make serve`` and ``make test`` both install against
``constraints.txt``, and an environment ``make test`` installed has exactly those versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"constraints.txt:{number}: not NAME==VERSION: {line!r}"
        name = _canonical(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def test_constraints_pin_the_shared_packages() -> None:
    pins = _pins()
    for name in ("numpy", "opencv-python-headless", "onnxruntime", "fastapi", "pillow",
                 "fastapi-offline", "regex", "pytest", "playwright", "torch"):  # fmt: skip
        assert name in pins, name
    assert "focus-serve" not in pins  # the project itself is installed editable
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch_version and pins["torch"] == torch_version.group(1)


def test_serve_and_test_install_against_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [
        line.strip() for line in makefile.splitlines()
        if line.startswith("\t$(PIP) install")
    ]  # fmt: skip
    assert installs, "no install lines found"
    assert all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert "CONSTRAINTS ?= constraints.txt" in makefile
    assert "$(wildcard $(CONSTRAINTS))" in makefile.split("DEPS_HASH :=")[1].splitlines()[0]


def _make_test_stamp() -> Path:
    """The stamp ``make test`` leaves in the venv it installed from this checkout's files."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "Makefile", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return Path(sys.prefix) / f".focus-test-{digest.hexdigest()[:16]}"


def test_an_environment_made_by_make_test_has_the_pinned_versions() -> None:
    if not _make_test_stamp().exists():
        pytest.skip("this environment was not installed by `make test` from this checkout")
    wrong = []
    for dist in importlib.metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        pinned = _pins().get(name)
        if pinned is not None and dist.version.split("+")[0] != pinned.split("+")[0]:
            wrong.append(f"{name} {dist.version} (pinned {pinned})")
    assert wrong == []
