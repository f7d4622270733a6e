"""Put the ``python_path`` of this model's ``config.pbtxt`` on ``sys.path``.

Triton's Python backend stub embeds the system interpreter and ignores ``PYTHONPATH``, and it
imports ``triton_python_backend_utils`` (which needs numpy) right after ``model.py``, before
``initialize`` sees the config. So each ``model.py`` imports this module first: it reads the
parameter from ``../config.pbtxt`` (the layout ``export.triton_pbtxt.parameters`` writes) and
prepends its entries, ``:``-separated; relative entries are relative to the model repository.
Without the parameter it does nothing (the packages are installed for that interpreter).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

KEY = "python_path"
_PATTERN = re.compile(r'key:\s*"' + KEY + r'"\s*value\s*:?\s*\{\s*string_value:\s*"([^"\\]*)"')


def python_path(config_text: str, repository: Path) -> list[str]:
    """The directories named by ``python_path`` in ``config_text``, absolute."""
    match = _PATTERN.search(config_text)
    if match is None:
        return []
    entries = [e for e in match.group(1).split(":") if e]
    return [str((repository / e).resolve()) if not Path(e).is_absolute() else e for e in entries]


def _install() -> None:
    model_dir = Path(__file__).resolve().parent.parent  # <repository>/<model>/<version>/..
    config = model_dir / "config.pbtxt"
    if not config.is_file():
        return
    for entry in reversed(python_path(config.read_text(encoding="utf-8"), model_dir.parent)):
        if entry not in sys.path:
            sys.path.insert(0, entry)


_install()
