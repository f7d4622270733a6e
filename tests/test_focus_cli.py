"""``focus``: a subcommand package whose optional dependency is missing drops out quietly; a
broken import inside the project is an error, not a silently missing subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest

import focus_cli


def _subcommand_module(tmp_path: Path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(
        body + "\n\ndef register(subparsers):\n"
        f"    subparsers.add_parser({name!r}).set_defaults(func=lambda args: 0)\n"
    )
    return name


def test_missing_optional_dependency_drops_only_that_subcommand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    optional = _subcommand_module(tmp_path, "needs_extra", "import no_such_optional_extra")
    fine = _subcommand_module(tmp_path, "plain_cli", "import json")
    monkeypatch.setattr(focus_cli, "_SUBCOMMAND_MODULES", (optional, fine))
    parser = focus_cli.build_parser()
    assert parser.parse_args(["plain_cli"]).command == "plain_cli"
    with pytest.raises(SystemExit):
        parser.parse_args(["needs_extra"])


@pytest.mark.parametrize("target", ["models.no_such_module", "service.no_such_module"])
def test_broken_internal_import_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = _subcommand_module(tmp_path, "broken_cli", f"import {target}")
    monkeypatch.setattr(focus_cli, "_SUBCOMMAND_MODULES", (broken,))
    with pytest.raises(ModuleNotFoundError) as info:
        focus_cli.build_parser()
    assert info.value.name == target


def test_every_subcommand_registers_here() -> None:
    """The dev environment has every extra: no package may drop out."""
    actions = [a for a in focus_cli.build_parser()._actions if a.dest == "command"]
    assert {"train", "eval", "data", "export", "pipeline", "import-official", "serve",
            "segment"} <= set(actions[0].choices)
