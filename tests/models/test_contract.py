"""models.contract: the shared facts, and the engine sidecar's one reader/writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.contract import (
    INPUT_NAMES,
    MAX_INPUT_SIDE,
    MIN_INPUT_SIDE,
    EngineSidecar,
    SidecarError,
    check_outputs,
    check_padded_shape,
    engine_cache_path,
    engine_sidecar_path,
    external_data_file,
    onnx_variant_file,
)


def test_file_names() -> None:
    assert external_data_file("model.onnx") == "model.onnx.data"
    assert onnx_variant_file("fp32") == "model.onnx"
    assert onnx_variant_file("int8") == "model.int8.onnx"
    assert engine_sidecar_path(Path("/r/salient/2/model.engine")) == Path(
        "/r/salient/2/model.engine.json"
    )
    assert engine_cache_path("/c", "salient", 2) == Path("/c/salient/2/model.engine")


def test_sidecar_round_trip_and_profile(tmp_path: Path) -> None:
    shapes = {"min": (1, 3, 64, 64), "opt": (4, 3, 256, 352), "max": (4, 3, 1024, 1024)}
    sidecar = EngineSidecar(
        gpu_name="NVIDIA H100",
        tensorrt_version="10.8",
        precision="fp16",
        max_batch=4,
        profile=dict.fromkeys(INPUT_NAMES, shapes),
        onnx="model.onnx",
        build_seconds=12.34,
    )
    path = sidecar.save(tmp_path / "model.engine")
    assert path == tmp_path / "model.engine.json"
    data = json.loads(path.read_text())
    assert data["profile"]["image"]["opt"] == [4, 3, 256, 352] and data["build_seconds"] == 12.3
    loaded = EngineSidecar.load(tmp_path / "model.engine")
    assert loaded.input_range() == ((1, 3, 64, 64), (4, 3, 1024, 1024))
    assert loaded.accepts((2, 3, 256, 1024)) and not loaded.accepts((5, 3, 256, 256))
    assert not loaded.accepts((1, 3, 32, 256))


def test_sidecar_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SidecarError, match="no model.engine.json beside the engine"):
        EngineSidecar.load(tmp_path / "model.engine")
    (tmp_path / "model.engine.json").write_text('{"gpu_name": "x"}')
    with pytest.raises(SidecarError, match="invalid engine sidecar"):
        EngineSidecar.load(tmp_path / "model.engine")
    (tmp_path / "model.engine.json").write_text("{not json")
    with pytest.raises(SidecarError, match="unreadable engine sidecar"):
        EngineSidecar.load(tmp_path / "model.engine")


def test_padded_shape_limits() -> None:
    check_padded_shape(MIN_INPUT_SIDE, MAX_INPUT_SIDE)
    with pytest.raises(ValueError, match="padded height 32 is outside the model's range 64..8192"):
        check_padded_shape(32, 256)
    with pytest.raises(ValueError, match="padded width 100 is not a multiple of 32"):
        check_padded_shape(64, 100)


def test_check_outputs_refuses_contract_violations() -> None:
    cp, ml = check_outputs(np.zeros((2, 2, 2)), np.zeros((2, 2, 16, 24)), 2, 64, 96)
    assert cp.dtype == ml.dtype == np.float32
    with pytest.raises(RuntimeError, match=r"expected \[2, 2, 2\] and \[2, 2, 16, 24\]"):
        check_outputs(np.zeros((2, 2, 2)), np.zeros((2, 2, 16, 25)), 2, 64, 96)
