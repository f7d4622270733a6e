"""focus pipeline end to end (the session's ``tiny_pipeline`` fixture ran it: synthetic data,
tiny preset, a few steps), then the published entry served by the service's ONNX Runtime
backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_pipeline import TinyPipeline, torch_threads

from export.pipeline import PipelineConfig, PipelineError, run_pipeline
from models.config import ModelCard
from models.processing import postprocess, preprocess_with_card

ROOT = Path(__file__).resolve().parents[2]


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_every_stage_reported_its_outcome(tiny_pipeline: TinyPipeline) -> None:
    stages = {s["name"]: s for s in tiny_pipeline.report["stages"]}
    assert list(stages) == ["train", "evaluate", "onnx", "tensorrt"]
    assert [s["status"] for s in stages.values()] == ["ok", "ok", "ok", "skipped"]
    assert stages["train"]["detail"] == "3 iterations"
    assert "checkpoint" not in stages["train"] and stages["onnx"]["onnx"]["onnx"] == "model.onnx"
    assert tiny_pipeline.report["data"] == ["data"]  # the folder's name, not this machine's path
    assert [
        s for s in _strings(tiny_pipeline.report) if "/" + "tmp" in s or s.startswith("/")
    ] == []
    metrics = stages["evaluate"]["metrics"]["data"]
    assert metrics["images"] == 8 and 0.0 <= metrics["MAE"] <= 1.0
    assert stages["onnx"]["onnx"]["parity"]["fp32"]["ok"] is True
    assert stages["tensorrt"]["detail"] == "disabled (--tensorrt off)"
    if tiny_pipeline.log:  # printed as the stages ended (absent when served from the cache)
        lines = tiny_pipeline.log.splitlines()
        assert [line.split("]")[1].split()[0] for line in lines] == [
            "train",
            "evaluate",
            "onnx",
            "tensorrt",
            "publish",
        ]
        assert lines[0].startswith("[     ok] train") and lines[3].startswith("[skipped] tensorrt")


def test_entry_is_a_model_repository_entry_and_a_checkpoint(tiny_pipeline: TinyPipeline) -> None:
    from models.repository import scan_repository

    files = sorted(p.name for p in tiny_pipeline.entry.iterdir())
    assert files == ["focus.json", "model.onnx", "model.safetensors", "pipeline.json"]
    entries = scan_repository(tiny_pipeline.repository)
    assert list(entries) == ["salient"]
    assert entries["salient"].artefacts == ("model.onnx", "model.safetensors")
    card = ModelCard.load(tiny_pipeline.entry)
    assert card.provenance["source"] == "focus train" and card.provenance["step"] == 3
    report = json.loads((tiny_pipeline.entry / "pipeline.json").read_text())
    assert report["task"] == "salient" and report["preset"] == "tiny"


def test_service_onnxruntime_backend_segments_an_image(tiny_pipeline: TinyPipeline) -> None:
    from models.checkpoint import load_checkpoint
    from models.predict import predict
    from models.synth import sample
    from service.backends.onnxruntime import OnnxRuntimeBackend

    card = ModelCard.load(tiny_pipeline.entry)
    backend = OnnxRuntimeBackend(tiny_pipeline.onnx, card, intra_op_threads=1)
    rgb, _ = sample("salient", index=100, seed=5, size=200)
    prep = preprocess_with_card(rgb, card)
    probs, logits = backend.infer(prep.image[None], prep.edges[None])
    soft, binary = postprocess(
        probs[0], logits[0], prep.padded_size, prep.resized_size, prep.original_size
    )
    assert soft.shape == binary.shape == rgb.shape[:2]
    assert soft.dtype == np.float32 and 0.0 <= soft.min() <= soft.max() <= 1.0
    model, _ = load_checkpoint(tiny_pipeline.entry)
    with torch_threads(1):
        soft_torch, binary_torch = predict(model, card, rgb)
    assert np.abs(soft - soft_torch).max() <= 1e-4
    assert (binary == binary_torch).mean() >= 0.999
    backend.close()


def test_failed_stage_exits_nonzero_and_leaves_the_repository_untouched(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "salient").mkdir(parents=True)
    (repo / "salient" / "model.onnx").write_bytes(b"previous")
    lines: list[str] = []
    config = PipelineConfig(
        task="sod",
        data=(str(tmp_path / "missing"),),
        out=repo,
        iters=1,
        workers=0,
        device="cpu",
        tensorrt="off",
    )
    with pytest.raises(PipelineError, match="pipeline stage 'train' failed"):
        run_pipeline(config, echo=lines.append)
    assert len(lines) == 1 and lines[0].startswith("[ failed] train")
    assert (repo / "salient" / "model.onnx").read_bytes() == b"previous"
    assert sorted(p.name for p in (repo / "salient").iterdir()) == ["model.onnx"]


def test_pipeline_cli_reports_failure(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "focus_cli.py",
            "pipeline",
            "--task",
            "nope",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "repo"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown task") or "nope" in result.stderr
