"""``focus export onnx`` ends with a short summary (what it wrote, the parity numbers, the time);
the exporter libraries' INFO logging appears only with ``-v``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_pipeline import TinyPipeline

from export.cli import EXPORTER_LOGGERS, TORCHVISION_NOTE
from focus_cli import main
from training.loop import torch_threads


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def torch_note() -> Iterator[_Records]:
    """What the torchvision-note logger emits (torch's loggers write through their own stderr
    handler, which neither caplog nor the capture fixtures see reliably)."""
    names = (*EXPORTER_LOGGERS, TORCHVISION_NOTE)
    levels = {name: logging.getLogger(name).level for name in names}
    records = _Records()
    logging.getLogger(TORCHVISION_NOTE).addHandler(records)
    with warnings.catch_warnings():  # the CLI's warning filter stays inside the test
        yield records
    logging.getLogger(TORCHVISION_NOTE).removeHandler(records)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _export(
    tiny_pipeline: TinyPipeline, out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> int:
    """The CLI path with the trace replaced by the session's graph, logging as the exporter
    libraries do while tracing."""
    import onnx_ir as ir

    import export.onnx as export_onnx_module

    def trace(*args: object, **kwargs: object) -> object:
        logging.getLogger("onnxscript.optimizer").info("exporter chatter: folded a constant")
        logging.getLogger("onnxscript.optimizer").warning("exporter chatter: skipped a Split")
        logging.getLogger("onnx_ir.passes").info("exporter chatter: deduplicated")
        logging.getLogger("export.onnx").warning("focus warning: kept visible")
        logging.getLogger(TORCHVISION_NOTE).warning("torchvision is not installed")
        return ir.load(tiny_pipeline.onnx)

    monkeypatch.setattr(export_onnx_module, "trace", trace)
    argv = ["export", "onnx", "--checkpoint", str(tiny_pipeline.entry), "--out", str(out)]
    with torch_threads(1):
        return main([*argv, *extra])


def test_export_prints_a_summary_without_the_exporters_logs(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture, torch_note: _Records,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    out = tmp_path / "out" / "model.onnx"
    assert _export(tiny_pipeline, out, monkeypatch) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "exporter chatter" in m]
    assert "focus warning: kept visible" in messages
    assert torch_note.messages == []
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out} (")
    assert lines[0].endswith(str(out.parent / "focus.json"))
    assert lines[1].startswith("export took ") and "peak RSS" in lines[1]
    assert lines[-1].startswith("parity fp32 vs PyTorch: soft max |diff| ")
    assert lines[-1].endswith(": ok") and len(lines) <= 5


def test_export_verbose_shows_the_exporters_logs(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, torch_note: _Records,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    assert _export(tiny_pipeline, tmp_path / "model.onnx", monkeypatch, "-v") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "exporter chatter: folded a constant" in messages
    assert "exporter chatter: skipped a Split" in messages
    assert "exporter chatter: deduplicated" in messages
    assert torch_note.messages == ["torchvision is not installed"]
