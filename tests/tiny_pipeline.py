"""What the ``tiny_pipeline`` fixture (tests/conftest.py) hands to tests.

A plain module (not conftest) so tests can import it: ``from tiny_pipeline import ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TinyPipeline:
    """The published model-repository entry and what the pipeline reported."""

    repository: Path  # <repo>, holding PIPELINE_TASK/
    entry: Path  # <repo>/<task>/1: focus.json, model.onnx, model.safetensors, pipeline.json
    data: Path  # the synthetic training set (images/, masks/)
    report: dict[str, Any]
    log: str  # the stage lines the pipeline printed (empty when served from the cache)

    @property
    def onnx(self) -> Path:
        return self.entry / "model.onnx"

