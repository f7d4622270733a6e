"""The README's commands work as written after its two set-up commands: every ``focus`` command
in a code block is spelled with its path (``.venv/bin/focus``; ``focus`` is not on PATH without
activating the venv) and parses with the real CLI; every ``make`` target it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from focus_cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)


def _commands() -> list[str]:
    """Every command line of the README's shell blocks (continuations joined)."""
    commands = []
    for block in BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def _focus_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for command in _commands():
        tokens = shlex.split(command, comments=True)
        if tokens and tokens[-1] == "&":  # run in the background
            tokens.pop()
        for i, token in enumerate(tokens):
            if token == "focus" or token.endswith("/focus"):
                found.append((command, tokens[i:]))
                break
    return found


def test_readme_has_focus_commands() -> None:
    assert len(_focus_invocations()) >= 15


@pytest.mark.parametrize(
    ("command", "tokens"),
    [pytest.param(c, t, id=" ".join(t[1:4])) for c, t in _focus_invocations()],
)
def test_readme_focus_command_parses(command: str, tokens: list[str]) -> None:
    assert tokens[0] == ".venv/bin/focus", f"not runnable after `make serve`: {command}"
    try:
        args = build_parser().parse_args(tokens[1:])
    except SystemExit as exc:
        pytest.fail(f"`{command}` does not parse (exit {exc.code})")
    assert callable(args.func)


def test_readme_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    used = set()
    for command in _commands():
        tokens = shlex.split(command, comments=True)
        if tokens and tokens[0] == "make":
            used.update(t for t in tokens[1:] if "=" not in t)
    assert used and used <= targets, used - targets
