"""The bundled demo models ship inference checkpoints (``model.safetensors`` beside
``model.onnx``) that give the ONNX graph's masks through PyTorch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from export.parity import Tolerance, measure_parity, onnxruntime_predictor, torch_predictor
from models.checkpoint import is_training_only, load_checkpoint
from models.contract import ONNX_FILE, WEIGHTS_FILE

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repository"
TASKS = ("salient", "camouflage", "shadow", "defocus", "forgery")


def _recovery_module():
    spec = importlib.util.spec_from_file_location(
        "recover_demo_weights", ROOT / "scripts" / "recover_demo_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", TASKS)
def test_demo_checkpoint_is_small_and_inference_only(task):
    weights = DEMO / task / WEIGHTS_FILE
    assert weights.stat().st_size <= 10 * 1024 * 1024
    state = load_file(str(weights))
    assert not [k for k in state if is_training_only(k)]
    model, card = load_checkpoint(DEMO / task)
    assert card.task == task
    inference = [k for k in model.state_dict() if not is_training_only(k)]
    assert sorted(state) == sorted(inference)


@pytest.mark.parametrize("task", ["salient", "forgery"])
def test_demo_checkpoint_matches_its_onnx_graph(task):
    torch.set_num_threads(1)
    model, card = load_checkpoint(DEMO / task)
    report = measure_parity(
        onnxruntime_predictor(DEMO / task / ONNX_FILE, threads=1),
        torch_predictor(model),
        card,
        Tolerance("demo", soft_max_abs=1e-5, min_iou=1.0),
    )
    assert report.ok, report.summary()
    assert report.images >= 8


def test_recovery_from_the_onnx_graph_reproduces_the_shipped_weights():
    recover = _recovery_module()
    model, _ = load_checkpoint(DEMO / "camouflage")
    state = recover.recover_state(DEMO / "camouflage" / ONNX_FILE, model.state_dict())
    shipped = load_file(str(DEMO / "camouflage" / WEIGHTS_FILE))
    assert sorted(state) == sorted(shipped)
    for key, value in shipped.items():
        assert torch.equal(state[key], value), key


def test_checkpoint_without_a_non_training_tensor_is_refused(tmp_path):
    import shutil

    from safetensors.torch import save_file

    from models.weights import CheckpointError

    shutil.copy(DEMO / "salient" / "focus.json", tmp_path / "focus.json")
    state = load_file(str(DEMO / "salient" / WEIGHTS_FILE))
    del state["backbone.cls_token"]
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="backbone.cls_token"):
        load_checkpoint(tmp_path)
