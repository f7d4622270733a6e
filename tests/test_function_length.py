"""Readable functions (issue 10): no function in the packages runs over ~80 lines.

A long function is usually several steps sharing mutable locals; split it into named steps.
The allowance below names the functions that are still over the limit and why; it only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "export", "service")
MAX_LINES = 80
ALLOWED = {  # (file, function) -> why it is still long
    ("service/metrics.py", "__init__"): "one declaration per metric, all in one place (STYLE 13)",
}


def _functions(root: Path = ROOT) -> list[tuple[str, str, int]]:
    """(file, function, lines) of every function and method under ``root``'s packages."""
    found = []
    files = [p for p in [root / "focus_cli.py"] if p.is_file()]
    files += [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                found.append((path.relative_to(root).as_posix(), node.name, lines))
    return found


def test_no_function_in_the_packages_is_longer_than_the_limit() -> None:
    long = [f"{f}:{name} ({n} lines)" for f, name, n in _functions()
            if n > MAX_LINES and (f, name) not in ALLOWED]
    assert long == []


def test_the_walker_measures_functions_and_methods(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "models" / "m.py").write_text(
        f"def long():\n{body}\n\nclass C:\n    async def short(self):\n        return 1\n"
    )
    assert sorted(_functions(tmp_path)) == [
        ("models/m.py", "long", MAX_LINES + 1), ("models/m.py", "short", 2)
    ]
