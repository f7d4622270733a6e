"""focus export triton: the generated config.pbtxt files parse as Triton ModelConfig and say
what our artefacts are. Artefact contents are opaque to the writer, so small stand-in files do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from triton_config_proto import parse

from export.triton import TritonOptions, config_pbtxt, write_triton_repository
from focus_cli import main
from models.config import make_card


def _repository(root: Path, tasks: dict[str, tuple[str, ...]]) -> Path:
    for task, files in tasks.items():
        directory = root / task
        directory.mkdir(parents=True)
        make_card(task, "tiny", version="7").save(directory)
        for name in files:
            (directory / name).write_bytes(f"{task}:{name}".encode())
    return root


def _inputs_outputs(config) -> tuple[dict, dict]:
    inputs = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    return inputs, outputs


FP32 = 11  # inference.DataType.TYPE_FP32


def test_onnx_repository_has_one_model_per_task_with_the_contract(tmp_path: Path) -> None:
    src = _repository(
        tmp_path / "repo",
        {"salient": ("model.onnx",), "camouflage": ("model.onnx", "model.safetensors")},
    )
    (src / "not-a-task").mkdir()
    written = write_triton_repository(src, tmp_path / "triton")
    assert [p.name for p in written] == ["camouflage", "salient"]
    for task in ("camouflage", "salient"):
        model_dir = tmp_path / "triton" / task
        assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "focus.json"]
        assert (model_dir / "1" / "model.onnx").read_bytes() == f"{task}:model.onnx".encode()
        assert json.loads((model_dir / "focus.json").read_text())["task"] == task
        config = parse((model_dir / "config.pbtxt").read_text())
        assert config.name == task
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 8
        assert config.default_model_filename == "model.onnx"
        inputs, outputs = _inputs_outputs(config)
        assert inputs == {"image": (FP32, [3, -1, -1]), "edges": (FP32, [3, -1, -1])}
        assert outputs == {"class_probs": (FP32, [2, 2]), "mask_logits": (FP32, [2, -1, -1])}
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, 0)]  # KIND_AUTO
    assert not (tmp_path / "triton" / "not-a-task").exists()


def test_tensorrt_plan_takes_the_engine_max_batch(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"shadow": ("model.onnx", "model.engine")})
    meta = {
        "gpu_name": "NVIDIA H100",
        "tensorrt_version": "10.8.0",
        "precision": "fp16",
        "max_batch": 4,
    }
    (src / "shadow" / "model.engine.json").write_text(json.dumps(meta))
    options = TritonOptions(platform="tensorrt_plan", kind="KIND_GPU")
    write_triton_repository(src, tmp_path / "triton", options)
    model_dir = tmp_path / "triton" / "shadow"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"shadow:model.engine"
    config = parse((model_dir / "config.pbtxt").read_text())
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 4)
    assert config.default_model_filename == "model.plan"
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, 1)]  # KIND_GPU
    with pytest.raises(ValueError, match="built for batch <= 4; --max-batch 16 exceeds it"):
        write_triton_repository(
            src, tmp_path / "t2", TritonOptions(platform="tensorrt_plan", max_batch=16)
        )


def test_plan_without_engine_metadata_is_refused(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"shadow": ("model.engine",)})
    with pytest.raises(ValueError, match="no model.engine.json beside it"):
        write_triton_repository(src, tmp_path / "t", TritonOptions(platform="tensorrt_plan"))


def test_repository_without_the_artefact_is_an_error(tmp_path: Path) -> None:
    src = _repository(tmp_path / "repo", {"salient": ("model.onnx",)})
    with pytest.raises(ValueError, match=r"no task in .* has focus.json and model.engine"):
        write_triton_repository(src, tmp_path / "t", TritonOptions(platform="tensorrt_plan"))


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="platform must be one of"):
        TritonOptions(platform="pytorch_libtorch")
    with pytest.raises(ValueError, match="cannot run on KIND_CPU"):
        TritonOptions(platform="tensorrt_plan", kind="KIND_CPU")
    with pytest.raises(ValueError, match="max batch must be >= 1"):
        TritonOptions(max_batch=0)


def test_the_parser_used_here_is_strict() -> None:
    """The structure test above would be worthless if unknown fields parsed."""
    good = config_pbtxt("salient", make_card("salient", "tiny"), TritonOptions(), 8)
    parse(good)
    for bad in (
        good.replace("max_batch_size", "max_batch"),
        good.replace("TYPE_FP32", "FP32"),
        good.replace("KIND_AUTO", "KIND_TPU"),
    ):
        with pytest.raises(text_format.ParseError):
            parse(bad)


def test_cli_writes_the_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _repository(tmp_path / "repo", {"forgery": ("model.onnx",)})
    rc = main(
        [
            "export",
            "triton",
            "--model-repository",
            str(src),
            "--out",
            str(tmp_path / "t"),
            "--max-batch",
            "16",
            "--instances",
            "2",
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 't' / 'forgery'}/config.pbtxt\n"
    config = parse((tmp_path / "t" / "forgery" / "config.pbtxt").read_text())
    assert config.max_batch_size == 16 and config.instance_group[0].count == 2
