"""focus export tensorrt without a GPU: clear errors, the profile, the graph check, and the
builder calls (against a recording stand-in for TensorRT). The real build is a `gpu` test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_tensorrt import Record, install, make_cudart, make_tensorrt
from onnx import TensorProto, helper, numpy_helper

from export.tensorrt import (
    EngineBuildError,
    build_engine,
    default_profile,
    graph_problems,
    make_profile,
    parse_shapes,
)
from focus_cli import main
from models.config import get_preset, make_card
from models.processing import padded_size, resized_size

CARD = make_card("salient", "tiny")


def _graph(path: Path, nodes: list | None = None, opset: int = 18) -> Path:
    """A small contract-shaped graph (image, edges -> class_probs, mask_logits)."""
    dims = ["N", 3, "H", "W"]
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "w")
    probs = numpy_helper.from_array(np.full((1, 2, 2), 0.25, np.float32), "p")
    nodes = nodes or [
        helper.make_node("Add", ["image", "edges"], ["s"]),
        helper.make_node("Mul", ["s", "w"], ["t"]),
        helper.make_node("AveragePool", ["t"], ["u"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Concat", ["u", "u"], ["v"], axis=1),
        helper.make_node("Slice", ["v", "starts", "ends", "axes"], ["mask_logits"]),
        helper.make_node("Identity", ["p"], ["class_probs"]),
    ]
    const = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("starts", [0]), ("ends", [2]), ("axes", [1]))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("image", "edges")],
        [
            helper.make_tensor_value_info("class_probs", TensorProto.FLOAT, [1, 2, 2]),
            helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, None),
        ],
        [weight, probs, *const],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    CARD.save(path.parent)
    return path


# ----------------------------------------------------------------------------- errors


def test_cli_without_tensorrt_exits_3_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, None, None)
    onnx_path = _graph(tmp_path / "model.onnx")
    rc = main(["export", "tensorrt", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.startswith("error: TensorRT is not available (")
    assert "pip install '.[tensorrt]'" in err
    assert not (tmp_path / "m.engine").exists()


def test_cli_without_a_cuda_device_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, make_tensorrt(Record()), make_cudart(()))
    onnx_path = _graph(tmp_path / "model.onnx")
    rc = main(["export", "tensorrt", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err
    assert rc == 3
    assert "cannot build a TensorRT engine: no CUDA device 0 (found 0)" in err


def test_cli_without_cuda_python_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, make_tensorrt(Record()), None)
    onnx_path = _graph(tmp_path / "model.onnx")
    rc = main(["export", "tensorrt", "--onnx", str(onnx_path), "--out", str(tmp_path / "e")])
    assert rc == 3
    assert "cuda-python is not available" in capsys.readouterr().err


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path = _graph(tmp_path / "model.onnx")
    base = ["export", "tensorrt", "--out", str(tmp_path / "e")]
    assert main([*base, "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such ONNX file" in capsys.readouterr().err
    assert main([*base, "--onnx", str(onnx_path), "--shapes", "min=64x64"]) == 2
    assert "--shapes needs min, opt and max" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*base, "--onnx", str(onnx_path), "--fp16", "--bf16"])
    assert info.value.code == 2


# ----------------------------------------------------------------------------- the profile


@pytest.mark.parametrize("preset", ["tiny", "large"])
def test_default_profile_covers_every_shape_the_preprocessing_produces(preset: str) -> None:
    card = make_card("camouflage", preset, get_preset(preset))
    profile = default_profile(card, max_batch=8)
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(40, 6000, (500, 2))]
    sizes += [(100, 10000), (10000, 90), (card.input_short_side, card.input_short_side)]
    for h, w in sizes:
        rh, rw = resized_size(h, w, card.input_short_side, card.input_max_size)
        hp, wp = padded_size(rh, rw, card.size_divisibility)
        for n in (1, 8):
            assert profile.contains((n, 3, hp, wp)), (h, w, hp, wp)
    assert not profile.contains((9, 3, 256, 256))
    short = card.input_short_side
    assert profile.opt[2] == short and profile.opt[3] == -(-short * 4 // 3 // 32) * 32


def test_tiny_default_profile_numbers() -> None:
    p = default_profile(CARD, max_batch=8, opt_batch=4)
    assert (p.min, p.opt, p.max) == ((1, 3, 64, 64), (4, 3, 256, 352), (8, 3, 1024, 1024))


def test_shapes_parse_and_validate() -> None:
    shapes = parse_shapes("min=64x64,opt=256x352,max=512x1024")
    assert shapes == {"min": (64, 64), "opt": (256, 352), "max": (512, 1024)}
    p = make_profile(shapes["min"], shapes["opt"], shapes["max"], max_batch=2)
    assert p.max == (2, 3, 512, 1024)
    for bad in ("min=64x64,opt=256x352", "min=64,opt=256x352,max=1x1", "foo=1x1,opt=1x1,max=1x1"):
        with pytest.raises(ValueError):
            parse_shapes(bad)
    with pytest.raises(ValueError, match="multiples of 32"):
        make_profile((64, 64), (250, 352), (512, 512), 1)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        make_profile((64, 64), (608, 352), (512, 512), 1)
    with pytest.raises(ValueError, match="opt batch 9 is not within 1..8"):
        make_profile((64, 64), (64, 64), (64, 64), 8, opt_batch=9)


# ----------------------------------------------------------------------------- the graph


def test_graph_problems_names_what_tensorrt_lacks(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("SplitToSequence", ["image"], ["seq"], axis=1),
        helper.make_node("SequenceAt", ["seq", "i"], ["x"]),
        helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1),
        helper.make_node("Slice", ["y", "starts", "ends", "dyn_axes"], ["z"]),
        helper.make_node("Shape", ["image"], ["dyn_axes"]),
        helper.make_node("MyOp", ["z"], ["w"], domain="com.example"),
    ]
    proto = onnx.load(str(_graph(tmp_path / "bad.onnx", nodes, opset=16)))
    problems = graph_problems(proto)
    assert "opset 16 < 17" in problems
    assert any(p.startswith("SplitToSequence node") and "not supported" in p for p in problems)
    assert any(p.startswith("SequenceAt node") for p in problems)
    assert any("antialias is not supported" in p for p in problems)
    assert any(p.startswith("Slice node") and "input 3 must be a constant" in p for p in problems)
    assert any("custom domain 'com.example'" in p for p in problems)


def test_contract_graph_has_no_problems(tmp_path: Path) -> None:
    assert graph_problems(onnx.load(str(_graph(tmp_path / "ok.onnx")))) == []


# ----------------------------------------------------------------------------- the build


def test_build_passes_profile_precision_workspace_and_timing_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = Record()
    install(monkeypatch, make_tensorrt(record), make_cudart(("NVIDIA H100 80GB HBM3",)))
    monkeypatch.delenv("FOCUS_ENGINE_CACHE", raising=False)
    onnx_path = _graph(tmp_path / "src" / "model.onnx")
    engine = tmp_path / "out" / "model.engine"
    info = build_engine(onnx_path, engine, precision="fp16", max_batch=4, workspace_gb=2)

    assert engine.read_bytes() == b"fake-plan"
    assert record.parsed == [str(onnx_path)] and record.network_flags == 0
    trt = sys.modules["tensorrt"]
    assert record.flags == [trt.BuilderFlag.FP16]
    assert record.pools == {trt.MemoryPoolType.WORKSPACE: 2 << 30}
    expected = ((1, 3, 64, 64), (4, 3, 256, 352), (4, 3, 1024, 1024))
    assert record.profiles == [{"image": expected, "edges": expected}]
    assert (tmp_path / "out" / "timing.cache").read_bytes() == b"+timings"
    meta = json.loads((tmp_path / "out" / "model.engine.json").read_text())
    assert meta["gpu_name"] == "NVIDIA H100 80GB HBM3" == info.gpu_name
    assert (meta["tensorrt_version"], meta["precision"], meta["max_batch"]) == (
        "10.8.0.43",
        "fp16",
        4,
    )
    assert meta["profile"]["image"] == {
        "min": [1, 3, 64, 64],
        "opt": [4, 3, 256, 352],
        "max": [4, 3, 1024, 1024],
    }

    # The service reads exactly this file and accepts it on the same GPU and TensorRT.
    from models.contract import EngineSidecar
    from models.runtime.tensorrt import check_engine_compatibility

    loaded = EngineSidecar.load(engine)
    assert (loaded.gpu_name, loaded.precision, loaded.max_batch) == (info.gpu_name, "fp16", 4)
    check_engine_compatibility(
        engine, loaded, gpu_name="NVIDIA H100 80GB HBM3", tensorrt_version="10.8.0.43"
    )

    # A second build starts from the saved timing cache; FOCUS_ENGINE_CACHE shares it.
    build_engine(onnx_path, engine, precision="fp32", max_batch=1)
    assert record.timing_cache_in[-1] == b"+timings"
    monkeypatch.setenv("FOCUS_ENGINE_CACHE", str(tmp_path / "cache"))
    build_engine(
        onnx_path,
        tmp_path / "x" / "model.engine",
        shapes=parse_shapes("min=64x64,opt=128x128,max=256x512"),
        max_batch=2,
    )
    assert (tmp_path / "cache" / "timing.cache").is_file()
    assert record.profiles[-1]["image"] == ((1, 3, 64, 64), (2, 3, 128, 128), (2, 3, 256, 512))


def test_strongly_typed_tensorrt_gets_an_fp16_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT 11 has no BuilderFlag.FP16: the graph itself is converted to fp16."""
    record = Record()
    install(
        monkeypatch,
        make_tensorrt(record, version="11.0.0", weakly_typed=False),
        make_cudart(("NVIDIA H200",)),
    )
    onnx_path = _graph(tmp_path / "model.onnx")
    parsed_graphs = []
    trt = sys.modules["tensorrt"]
    original = trt.OnnxParser.parse_from_file

    def keep(self, path: str) -> bool:
        parsed_graphs.append(onnx.load(path))
        return original(self, path)

    monkeypatch.setattr(trt.OnnxParser, "parse_from_file", keep)
    build_engine(onnx_path, tmp_path / "e" / "model.engine", precision="fp16")
    assert record.network_flags == 1 << 1 and record.flags == []
    weight = {i.name: i for i in parsed_graphs[0].graph.initializer}["w"]
    assert weight.data_type == TensorProto.FLOAT16
    inputs = {i.name: i.type.tensor_type.elem_type for i in parsed_graphs[0].graph.input}
    assert inputs == {"image": TensorProto.FLOAT, "edges": TensorProto.FLOAT}
    with pytest.raises(EngineBuildError, match="no BuilderFlag.BF16"):
        build_engine(onnx_path, tmp_path / "e" / "model.engine", precision="bf16")


def test_parser_errors_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, make_tensorrt(Record(), parse_ok=False), make_cudart(("GPU",)))
    onnx_path = _graph(tmp_path / "model.onnx")
    with pytest.raises(EngineBuildError, match="could not parse .*UNSUPPORTED_NODE: fake"):
        build_engine(onnx_path, tmp_path / "model.engine")
    assert not (tmp_path / "model.engine").exists()


def test_unsupported_graph_is_refused_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record = Record()
    install(monkeypatch, make_tensorrt(record), make_cudart(("GPU",)))
    nodes = [
        helper.make_node("SplitToSequence", ["image"], ["mask_logits"], axis=1),
        helper.make_node("Identity", ["p"], ["class_probs"]),
    ]
    onnx_path = _graph(tmp_path / "model.onnx", nodes)
    rc = main(["export", "tensorrt", "--onnx", str(onnx_path), "--out", str(tmp_path / "e")])
    assert rc == 1
    assert "is not TensorRT-friendly (1 problems): SplitToSequence node" in capsys.readouterr().err
    assert record.built == 0
