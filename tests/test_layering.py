"""DESIGN's layering, read from the source: who may import whom, and what stays torch-free.

Every ``import`` statement counts, at module level or inside a function (a lazy import is
still a dependency). Module-level imports decide torch-freedom: a torch-free module may import
torch nowhere at module level, directly or through another project module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "export", "service")
# package -> project packages it must never import
FORBIDDEN = {
    "models": {"training", "export", "service"},
    "training": {"export", "service"},
    "export": {"service"},
    "service": {"training", "export"},
}
EXPORT_MAY_IMPORT_TRAINING = {"export/pipeline.py"}  # the train -> export pipeline only
# Modules the service and the torch-free GPU image rely on (DESIGN "Layout").
TORCH_FREE = (
    "models.contract",
    "models.config",
    "models.tasks",
    "models.processing",
    "models.imaging",
    "models.repository",
    "models.synth",
    "models.zoo",
    "models.runtime.onnxruntime",
    "models.runtime.tensorrt",
    "models.runtime.openvino",
    "models.precision",
    "export.precision",
)
TORCH_MODULES = {"torch", "torchvision", "safetensors.torch"}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module_level_only: bool, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and package:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_package_imports_what_design_forbids() -> None:
    back_edges = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        package = rel.split("/")[0]
        for line, name in _imports(path, module_level_only=False):
            top = name.split(".")[0]
            if top == "training" and package == "export" and rel in EXPORT_MAY_IMPORT_TRAINING:
                continue
            if top in FORBIDDEN[package]:
                back_edges.append(f"{rel}:{line} imports {name}")
    assert back_edges == []


def _project_file(module: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _torch_chain(module: str, seen: set[str], root: Path = ROOT) -> list[str] | None:
    """The module-level import chain from ``module`` to torch, or None if there is none."""
    if module in seen:
        return None
    seen.add(module)
    path = _project_file(module, root)
    if path is None:
        return None
    for _, name in _imports(path, module_level_only=True, root=root):
        if name in TORCH_MODULES or name.split(".")[0] == "torch":
            return [module, name]
        if name.split(".")[0] in PACKAGES:
            chain = _torch_chain(name, seen, root)
            if chain is not None:
                return [module, *chain]
    return None


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_never_import_torch_at_module_level(module: str) -> None:
    assert _project_file(module) is not None, f"{module} does not exist"
    assert _torch_chain(module, set()) is None


def test_service_modules_import_torch_nowhere_at_module_level() -> None:
    chains = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        chain = _torch_chain(_module_name(path), set())
        if chain is not None:
            chains[path.relative_to(ROOT).as_posix()] = " -> ".join(chain)
    assert chains == {}


def test_the_walker_sees_a_back_edge_and_a_torch_chain(tmp_path: Path) -> None:
    """The checks above must be able to fail: a probe tree that breaks both rules."""
    (tmp_path / "export").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "export" / "probe.py").write_text(
        "from models import heavy\n\ndef f():\n    from service.app import create_app\n"
    )
    (tmp_path / "models" / "heavy.py").write_text("import torch.nn\n")
    probe = tmp_path / "export" / "probe.py"
    assert (4, "service.app") in _imports(probe, module_level_only=False, root=tmp_path)
    assert (4, "service.app") not in _imports(probe, module_level_only=True, root=tmp_path)
    assert _torch_chain("export.probe", set(), tmp_path) == [
        "export.probe",
        "models.heavy",
        "torch.nn",
    ]
