"""The export subcommands register with the `focus` CLI and stay torch-free where they must."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from focus_cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_export_and_pipeline_subcommands_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["export", "tensorrt", "--onnx", "m.onnx", "--out", "m.engine"])
    assert (args.precision, args.max_batch, args.workspace, args.shapes) == ("fp32", 8, 4.0, None)
    args = parser.parse_args(["export", "onnx", "--checkpoint", "c", "--out", "m.onnx", "--fp16"])
    assert args.fp16 and args.opset == 18
    args = parser.parse_args(["export", "triton", "--model-repository", "r", "--out", "t"])
    assert args.platform == "onnxruntime_onnx"
    args = parser.parse_args(["pipeline", "--task", "cod", "--data", "d", "--out", "r"])
    assert (args.preset, args.iters, args.tensorrt) == ("tiny", 2000, "auto")


def test_entrypoint_invocation_parses() -> None:
    """deploy/entrypoint.sh runs exactly this."""
    args = build_parser().parse_args(
        ["export", "tensorrt", "--onnx", "repo/salient/model.onnx", "--out", "cache/model.engine"]
    )
    assert args.func.__name__ == "_cmd_tensorrt"


def test_tensorrt_and_triton_paths_never_import_torch() -> None:
    code = (
        "import sys, focus_cli, export.cli, export.tensorrt, export.triton, export.parity, "
        "export.graph\n"
        "focus_cli.build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
