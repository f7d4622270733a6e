"""The exported ONNX graph of the session's tiny model (``tiny_pipeline`` in tests/conftest.py):
contract, size, TensorRT-friendliness, and parity with PyTorch (fp32 and the derived fp16)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from tiny_pipeline import TinyPipeline

from export.graph import default_opset, op_types, training_only_initializers
from export.onnx import derive_fp16, read_card
from export.parity import (
    FP16,
    FP32,
    ParityError,
    check_parity,
    onnxruntime_predictor,
    torch_predictor,
)
from export.tensorrt import TENSORRT_ONNX_OPS, graph_problems
from focus_cli import main
from models.config import ModelCard
from models.contract import METADATA_KEY
from training.loop import torch_threads

MAX_DEMO_BYTES = 10_000_000


@pytest.fixture(scope="module")
def model_and_card(tiny_pipeline: TinyPipeline):
    from models.checkpoint import load_checkpoint

    return load_checkpoint(tiny_pipeline.entry)  # the entry is also a checkpoint directory


@pytest.fixture(scope="module")
def proto(tiny_pipeline: TinyPipeline) -> onnx.ModelProto:
    return onnx.load(str(tiny_pipeline.onnx))


def test_graph_follows_the_onnx_contract(
    proto: onnx.ModelProto, tiny_pipeline: TinyPipeline
) -> None:
    onnx.checker.check_model(proto, full_check=True)

    def signature(values) -> dict:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out[v.name] = (t.elem_type, dims)
        return out

    inputs, outputs = signature(proto.graph.input), signature(proto.graph.output)
    assert list(inputs) == ["image", "edges"] and list(outputs) == ["class_probs", "mask_logits"]
    n, h, w = inputs["image"][1][0], inputs["image"][1][2], inputs["image"][1][3]
    assert all(isinstance(d, str) and d for d in (n, h, w)), inputs  # symbolic: dynamic
    assert inputs == {
        "image": (TensorProto.FLOAT, [n, 3, h, w]),
        "edges": (TensorProto.FLOAT, [n, 3, h, w]),
    }
    assert outputs["class_probs"][0] == outputs["mask_logits"][0] == TensorProto.FLOAT
    assert outputs["class_probs"][1][1:] == [2, 2]
    assert outputs["mask_logits"][1][:2] == [n, 2]

    meta = {e.key: e.value for e in proto.metadata_props}
    card = ModelCard.load(tiny_pipeline.entry)
    assert ModelCard.from_json(meta[METADATA_KEY]) == card == read_card(tiny_pipeline.onnx)
    assert card.task == "salient" and card.preset == "tiny"


def test_graph_excludes_the_training_only_clip_refiner(
    proto: onnx.ModelProto, model_and_card
) -> None:
    model, _ = model_and_card
    clip_params = [n for n, _ in model.named_parameters() if "clip_refiner" in n]
    assert clip_params, "the tiny model has a CLIP refiner, so this test can fail"
    names = [i.name for i in proto.graph.initializer]
    assert training_only_initializers(names) == []
    assert not any(m in n for n in names for m in ("clip_refiner", "text_embed", "image_embed"))
    inference = sum(
        p.numel() for n, p in model.named_parameters() if not training_only_initializers([n])
    )
    stored = sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == 1)
    assert stored <= inference * 1.05  # no duplicated weights (the BN buffers are extra)


def test_demo_model_is_small(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    assert tiny_pipeline.onnx.stat().st_size <= MAX_DEMO_BYTES
    fp16 = derive_fp16(tiny_pipeline.onnx, tmp_path / "model.onnx")
    assert fp16.stat().st_size <= 0.6 * tiny_pipeline.onnx.stat().st_size


def test_graph_is_tensorrt_friendly(proto: onnx.ModelProto) -> None:
    assert default_opset(proto) >= 17
    assert graph_problems(proto) == []
    used = {op for (domain, op) in op_types(proto)}
    assert used <= TENSORRT_ONNX_OPS, used - TENSORRT_ONNX_OPS
    assert "GridSample" in used  # the deformable attention stays one TensorRT op


def test_polygraphy_sees_opset_18_and_only_tensorrt_supported_ops(
    tiny_pipeline: TinyPipeline,
) -> None:
    """NVIDIA's own inspector (its ONNX mode needs no GPU) on the exported graph."""
    exe = shutil.which("polygraphy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if exe is None:
        pytest.skip("polygraphy is not installed (pip install polygraphy)")
    result = subprocess.run(
        [exe, "inspect", "model", str(tiny_pipeline.onnx), "--show", "layers"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "ONNX Opset: 18" in result.stdout
    ops = set(re.findall(r"\[Op: (\w+)\]", result.stdout))
    assert "GridSample" in ops and "LayerNormalization" in ops
    assert ops <= TENSORRT_ONNX_OPS, ops - TENSORRT_ONNX_OPS


def _square_and_wide_images() -> list[list[np.ndarray]]:
    """Other resolutions than the export's own parity images: square, and a wide panorama."""
    rng = np.random.default_rng(7)
    square = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)]
    wide = [rng.integers(0, 256, (120, 700, 3), dtype=np.uint8) for _ in range(2)]
    return [square, wide]


def test_onnx_matches_pytorch_fp32(tiny_pipeline: TinyPipeline, model_and_card) -> None:
    model, card = model_and_card
    stage = {s["name"]: s for s in tiny_pipeline.report["stages"]}["onnx"]
    exported = stage["onnx"]["parity"]["fp32"]  # measured by the export itself
    assert exported["ok"] and exported["soft_max_abs"] <= 1e-4 and exported["runs"] == 16
    with torch_threads(1):
        report = check_parity(
            torch_predictor(model),
            onnxruntime_predictor(tiny_pipeline.onnx),
            card,
            FP32,
            _square_and_wide_images(),
        )
    assert report.soft_max_abs <= 1e-4 and report.min_iou == 1.0


def test_derived_fp16_meets_the_fp16_tolerance(
    tiny_pipeline: TinyPipeline, model_and_card, tmp_path: Path
) -> None:
    model, card = model_and_card
    fp16 = derive_fp16(tiny_pipeline.onnx, tmp_path / "model.fp16.onnx")
    proto = onnx.load(str(fp16))
    assert {i.type.tensor_type.elem_type for i in [*proto.graph.input, *proto.graph.output]} == {
        TensorProto.FLOAT
    }
    assert any(i.data_type == TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert read_card(fp16) == card
    with torch_threads(1):
        report = check_parity(torch_predictor(model), onnxruntime_predictor(fp16), card, FP16)
    assert report.soft_mean_abs <= 1e-2 and report.min_iou >= 0.99


def test_a_wrong_graph_fails_parity_loudly(
    tiny_pipeline: TinyPipeline, model_and_card, tmp_path: Path
) -> None:
    model, card = model_and_card
    proto = onnx.load(str(tiny_pipeline.onnx))
    target = next(i for i in proto.graph.initializer if i.name.endswith("mask_embed.layers.2.bias"))
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) + 0.05, target.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with torch_threads(1), pytest.raises(ParityError) as info:
        check_parity(
            torch_predictor(model),
            onnxruntime_predictor(broken),
            card,
            FP32,
            _square_and_wide_images()[:1],
            what="broken",
        )
    assert str(info.value).startswith("broken: parity FAILED: soft max |diff| ")
    assert info.value.report.soft_max_abs > 1e-4


def test_export_onnx_cli_rejects_bad_arguments(tmp_path: Path, capsys) -> None:
    assert (
        main(["export", "onnx", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "m.onnx")])
        == 2
    )
    assert "is not a checkpoint directory (no focus.json)" in capsys.readouterr().err
    assert (
        main(["export", "onnx", "--checkpoint", str(tmp_path), "--out", "m.onnx", "--opset", "16"])
        == 2
    )
    assert "--opset must be >= 17" in capsys.readouterr().err


def test_export_checkpoint_writes_focus_json_beside_and_keeps_failures_aside(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI path without re-tracing: the trace is replaced by the session's graph."""
    import onnx_ir as ir

    import export.onnx as export_onnx_module

    monkeypatch.setattr(export_onnx_module, "trace", lambda *a, **k: ir.load(tiny_pipeline.onnx))
    with torch_threads(1):
        rc = main(
            [
                "export",
                "onnx",
                "--checkpoint",
                str(tiny_pipeline.entry),
                "--out",
                str(tmp_path / "out" / "model.onnx"),
                "--fp16",
            ]
        )
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["focus.json", "model.onnx"]
    assert ModelCard.load(tmp_path / "out") == ModelCard.load(tiny_pipeline.entry)
    assert any(
        i.data_type == TensorProto.FLOAT16
        for i in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer
    )

    # Parity failure: exit 1, the numbers on stderr, nothing at --out.
    proto = onnx.load(str(tiny_pipeline.onnx))
    for init in proto.graph.initializer:
        if init.name.endswith("class_embed.bias"):
            shift = np.array([2.0, -2.0, 0.0], np.float32)
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + shift, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    monkeypatch.setattr(export_onnx_module, "trace", lambda *a, **k: ir.load(broken))
    out = tmp_path / "bad" / "model.onnx"
    with torch_threads(1):
        with pytest.raises(ParityError, match=r"parity FAILED: soft max \|diff\|"):
            export_onnx_module.export_checkpoint(tiny_pipeline.entry, out)
    assert not out.exists() and (tmp_path / "bad" / "model.onnx.parity-failed").is_file()
    assert not (tmp_path / "bad" / "focus.json").exists()
    shutil.rmtree(tmp_path / "bad")


# ----------------------------------------------------------------------------- external data


def _external_locations(path: Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for init in proto.graph.initializer
        if init.data_location == TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }


def test_forced_external_data_export_is_a_pair_every_loader_reads(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``--external-data`` on the tiny model: the > 2 GB path of ``large``/``giant`` (issue 17)."""
    import onnx_ir as ir

    import export.onnx as export_onnx_module
    from export.triton import write_triton_repository
    from models.repository import publish_version, scan_repository
    from models.runtime.onnxruntime import OnnxRuntimePredictor

    monkeypatch.setattr(export_onnx_module, "trace", lambda *a, **k: ir.load(tiny_pipeline.onnx))
    out = tmp_path / "out" / "model.onnx"
    with torch_threads(1):
        rc = main(
            [
                "export",
                "onnx",
                "--checkpoint",
                str(tiny_pipeline.entry),
                "--out",
                str(out),
                "--external-data",
            ]
        )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} + model.onnx.data (" in printed
    assert "parity images: 8 images at batch 1 and 4\n" in printed
    assert re.search(r"export took \d+ s \(load \d+ s, trace \d+ s, .*peak RSS \d", printed)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "focus.json",
        "model.onnx",
        "model.onnx.data",
    ]
    data = out.with_name("model.onnx.data")
    assert _external_locations(out) == {"model.onnx.data"}
    assert out.stat().st_size < 0.1 * data.stat().st_size  # the weights are in the .data file
    assert read_card(out) == ModelCard.load(tiny_pipeline.entry)

    # ONNX Runtime, through the repository and the Triton writer's copy, computes what the
    # in-file graph computes.
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 128, 160), dtype=np.float32)
    edges = rng.random((1, 3, 128, 160), dtype=np.float32)
    expected = OnnxRuntimePredictor(tiny_pipeline.onnx).infer(image, edges)
    entry = publish_version(tmp_path / "repo", out.parent)
    assert entry.artefacts == ("model.onnx",)
    assert sorted(p.name for p in entry.directory.iterdir()) == [
        "focus.json",
        "model.onnx",
        "model.onnx.data",
    ]
    assert scan_repository(tmp_path / "repo")["salient"].directory == entry.directory
    write_triton_repository(tmp_path / "repo", tmp_path / "triton")
    triton_version = tmp_path / "triton" / "salient" / str(entry.version)  # the network model
    assert sorted(p.name for p in triton_version.iterdir()) == ["model.onnx", "model.onnx.data"]
    for path in (out, entry.path("model.onnx"), triton_version / "model.onnx"):
        got = OnnxRuntimePredictor(path).infer(image, edges)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)

    # Without its weights the graph does not load (nothing silently reads zeros).
    data.unlink()
    with pytest.raises(Exception, match=r"model\.onnx\.data"):
        OnnxRuntimePredictor(out)


def test_openvino_reads_the_external_data_pair(tiny_pipeline: TinyPipeline, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    from export.onnx import install_graph

    out = tmp_path / "model.onnx"
    proto = onnx.load(str(tiny_pipeline.onnx))
    onnx.save_model(
        proto, str(out), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    assert _external_locations(out) == {"model.onnx.data"}
    moved = tmp_path / "elsewhere" / "model.onnx"
    moved.parent.mkdir()
    install_graph(out, moved)  # the pair moves together
    assert sorted(p.name for p in moved.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 3, 96, 128), dtype=np.float32)
    edges = rng.random((1, 3, 96, 128), dtype=np.float32)
    compiled = ov.Core().compile_model(str(moved), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"image": image, "edges": edges})
    expected = onnxruntime_predictor(tiny_pipeline.onnx, threads=1).infer(image, edges)
    np.testing.assert_allclose(got["mask_logits"], expected[1], atol=1e-3)
    np.testing.assert_allclose(got["class_probs"], expected[0], atol=1e-4)


def test_an_external_data_graph_that_fails_parity_is_kept_as_a_folder(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx_ir as ir

    import export.onnx as export_onnx_module

    proto = onnx.load(str(tiny_pipeline.onnx))
    for init in proto.graph.initializer:
        if init.name.endswith("class_embed.bias"):
            shift = np.array([2.0, -2.0, 0.0], np.float32)
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + shift, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    monkeypatch.setattr(export_onnx_module, "trace", lambda *a, **k: ir.load(broken))
    out = tmp_path / "bad" / "model.onnx"
    with torch_threads(1), pytest.raises(ParityError):
        export_onnx_module.export_checkpoint(tiny_pipeline.entry, out, external_data=True)
    kept = tmp_path / "bad" / "model.onnx.parity-failed"
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["model.onnx.parity-failed"]
    assert sorted(p.name for p in kept.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert _external_locations(kept / "model.onnx") == {"model.onnx.data"}


def test_big_models_get_a_smaller_stated_parity_set() -> None:
    from torch import nn

    from export.onnx import FULL_PARITY_MAX_PARAMS, parity_plan

    small = nn.Linear(10, 10)
    assert parity_plan(small) == (None, "8 images at batch 1 and 4")
    big = nn.Linear(20_000, 8_000, device="meta")  # 160 M parameters, no memory
    assert sum(p.numel() for p in big.parameters()) > FULL_PARITY_MAX_PARAMS
    images, text = parity_plan(big)
    assert text == (
        "2 images (300x410) at batch 1 and 2, reduced for a model of 160 M inference parameters"
        " (> 150 M)"
    )
    # Training-only weights (the CLIP refiner) do not count: they are not in the graph.
    clip = nn.Module()
    clip.clip_refiner = nn.Linear(20_000, 8_000, device="meta")
    assert parity_plan(clip) == (None, "8 images at batch 1 and 4")
    assert len(images) == 1 and [i.shape for i in images[0]] == [(300, 410, 3)] * 2


def test_nodes_are_named_after_the_module_that_made_them(proto: onnx.ModelProto) -> None:
    """Per-module profiles (ONNX Runtime, OpenVINO) read the module from the node name."""
    from export.graph import node_module

    modules = [node_module(n.name) for n in proto.graph.node]
    assert sum(bool(m) for m in modules) >= 0.9 * len(modules)
    initializers = {i.name for i in proto.graph.initializer}
    checked = 0
    for node in proto.graph.node:
        weights = [i for i in node.input if i in initializers and i.endswith(".weight")]
        if node.op_type == "Conv" and weights:  # randomly initialised: never deduplicated
            module = weights[0].removeprefix("model.").removesuffix(".weight")
            assert node_module(node.name) == module, node.name
            checked += 1
    assert checked >= 40  # the tiny model's convolutions
    assert {m.split(".")[0] for m in modules if m} == {"backbone", "sem_seg_head"}
