"""What the ``tiny_pipeline`` fixture (tests/conftest.py) hands to tests, and a helper.

A plain module (not conftest) so tests can import it: ``from tiny_pipeline import ...``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on ``n`` threads: on a small shared machine, 2 OpenMP threads are ~30x slower
    than 1 for the tiny model (spin-waiting under contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
