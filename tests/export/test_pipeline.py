"""focus pipeline end to end (the session's ``tiny_pipeline`` fixture ran it: synthetic data,
tiny preset, a few steps), then the published entry served by the service's ONNX Runtime
backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_pipeline import TinyPipeline

from export.pipeline import PipelineConfig, PipelineError, run_pipeline
from models.config import ModelCard
from models.processing import postprocess, preprocess_with_card
from training.loop import torch_threads

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


def test_holdout_split_is_seeded_disjoint_and_sized() -> None:
    from export.pipeline import holdout_split

    items = list(range(50))
    train, held = holdout_split(items, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    assert sorted(train + held) == items and train == sorted(train)  # disjoint, order kept
    assert holdout_split(items, 0.1, seed=3) == (train, held)
    assert holdout_split(items, 0.1, seed=4)[1] != held
    assert len(holdout_split(items[:3], 0.01, seed=0)[1]) == 1  # at least one image
    with pytest.raises(ValueError, match="too few to hold out 1"):
        holdout_split(items[:1], 0.1, seed=0)


def test_recipe_fills_the_train_stage_and_explicit_settings_win(tmp_path: Path) -> None:
    from export.pipeline import train_config

    def config(**kw: object) -> PipelineConfig:
        return PipelineConfig(task="sod", data=("d",), out=tmp_path, **kw)  # type: ignore[arg-type]

    ref = train_config(config(), "salient", tmp_path / "run")
    assert (ref.batch_size, ref.num_points, ref.workers, ref.lr) == (8, 12544, 2, 1e-4)
    assert (ref.input_short_side, ref.threads, ref.iters) == (None, None, 2000)
    tiny = train_config(
        config(recipe="tiny-cpu", num_points=256, train_options={"lr": 5e-4}),
        "salient", tmp_path / "run",
    )
    assert (tiny.input_short_side, tiny.threads, tiny.clip_grad, tiny.workers) == (128, 1, 1.0, 1)
    assert (tiny.num_points, tiny.lr) == (256, 5e-4)  # explicit beats the recipe
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        run_pipeline(config(recipe="fast"), echo=print)


def test_pipeline_without_eval_data_evaluates_on_a_held_out_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`focus pipeline --recipe tiny-cpu` with no --eval-data: the stage lines report the split,
    training never sees a held-out image, evaluation scores exactly those. The ONNX stage (minutes
    of tracing, covered by the tiny_pipeline fixture) is stopped to keep this test short."""
    import focus_cli
    import training.evaluate
    import training.loop
    from models.synth import write_dataset
    from training.datasets import pair_folders

    data = write_dataset("salient", 10, tmp_path / "data", seed=0, size=64)
    trained: list = []
    scored: list = []
    real_train, real_evaluate = training.loop.train, training.evaluate.evaluate_pairs

    def spy_train(config: Any, pairs: Any = None) -> Any:
        trained.append((config, pairs))
        return real_train(config, pairs)

    def spy_evaluate(pairs: Any, *args: Any, **kwargs: Any) -> Any:
        scored.append(pairs)
        return real_evaluate(pairs, *args, **kwargs)

    def stop(*_: object) -> None:
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(training.loop, "train", spy_train)
    monkeypatch.setattr(training.evaluate, "evaluate_pairs", spy_evaluate)
    monkeypatch.setattr("export.pipeline._onnx", stop)
    argv = ["pipeline", "--recipe", "tiny-cpu", "--task", "sod", "--data", str(data),
            "--out", str(tmp_path / "repo"), "--iters", "3", "--holdout", "0.2",
            "--max-minutes", "1e-5",  # the time budget ends training after its first step
            "--input-short-side", "64", "--batch-size", "2", "--num-points", "128",
            "--workers", "0", "--device", "cpu", "--tensorrt", "off"]
    with torch_threads(1):
        assert focus_cli.main(argv) == 1  # the stopped ONNX stage
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[     ok] train") and out[0].endswith(
        "1 of 3 iterations (time budget) on 8 pairs (2 held out for evaluation)"
    )
    assert out[1].startswith("[     ok] evaluate") and "held-out (binary): MAE " in out[1]
    assert out[1].endswith("images 2") and out[2].startswith("[ failed] onnx")
    (config, pairs), = trained
    assert (config.lr, config.threads, config.clip_grad) == (1e-3, 1, 1.0)  # the recipe
    assert (config.input_short_side, config.num_points) == (64, 128)  # explicit flags
    every = {p.name for p in pair_folders(data / "images", data / "masks").pairs}
    train_names = {p.name for p in pairs}
    (held,) = scored
    held_names = {p.name for p in held.pairs}
    assert held.name == "held-out" and len(held_names) == 2 and len(train_names) == 8
    assert train_names | held_names == every and not train_names & held_names
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    "report",
    sorted((ROOT / "model_repository").rglob("pipeline.json")),
    ids=lambda p: p.parent.name,
)
def test_shipped_pipeline_reports_hold_no_paths_of_the_building_machine(report: Path) -> None:
    strings = _strings(json.loads(report.read_text()))
    assert [s for s in strings if s.startswith(("/", "~")) or " /" in s or ":\\" in s] == []


def test_onnx_stage_records_file_names_not_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import pipeline

    def fake_export(checkpoint: Path, out: Path) -> dict:
        return {"onnx": str(out), "external_data": str(out) + ".data", "bytes": 2_000_000,
                "parity": {"fp32": {"soft_max_abs": 1e-6, "min_iou": 1.0}}}

    monkeypatch.setattr("export.onnx.export_checkpoint", fake_export)
    text, data = pipeline._onnx({"checkpoint": str(tmp_path / "ckpt")}, tmp_path / "publish")
    assert data["onnx"]["onnx"] == "model.onnx"
    assert data["onnx"]["external_data"] == "model.onnx.data"
    assert text == "2.0 MB; parity vs PyTorch: soft max |diff| 1e-06, IoU 1.0000"
