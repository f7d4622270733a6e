"""Backend choice, the ONNX Runtime and PyTorch backends on the tiny model, TensorRT's refusals,
the model-repository scan, and the torch-free guarantee of the ONNX Runtime path."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from service_testing import image_bytes

from models.config import make_card
from models.contract import EngineSidecar
from models.repository import RepositoryError, scan_repository
from service.backends.base import BackendUnavailableError
from service.backends.factory import create_backend
from service.backends.onnxruntime import OnnxRuntimeBackend
from service.backends.tensorrt import (
    EngineMismatchError,
    TensorRTBackend,
    check_engine_compatibility,
    engine_candidates,
    select_engine,
)
from service.pipeline import compute_mask, prepare

ROOT = Path(__file__).resolve().parents[2]
GPU = "NVIDIA H100 80GB HBM3"
TRT = "10.13.0.35"


def _entry(model_repository: Path, task: str = "camouflage"):
    return scan_repository(model_repository)[task]


def _copy_task(model_repository: Path, tmp_path: Path, keep: tuple[str, ...]) -> Path:
    target = tmp_path / "repo" / "camouflage"
    target.mkdir(parents=True)
    for name in ("focus.json", *keep):
        shutil.copy(model_repository / "camouflage" / name, target / name)
    return tmp_path / "repo"


# ------------------------------------------------------------------------------- factory


def test_auto_on_cpu_prefers_onnxruntime(model_repository: Path) -> None:
    backend = create_backend(_entry(model_repository), backend="auto", device="cpu")
    assert isinstance(backend, OnnxRuntimeBackend)
    assert (backend.name, backend.device, backend.artefact.name) == (
        "onnxruntime",
        "cpu",
        "model.onnx",
    )


def test_named_backend_without_its_artefact_fails_with_reason(model_repository: Path, tmp_path):
    repo = _copy_task(model_repository, tmp_path, ("model.safetensors",))
    with pytest.raises(BackendUnavailableError, match="no model.onnx for onnxruntime"):
        create_backend(scan_repository(repo)["camouflage"], backend="onnxruntime")


def test_require_gpu_without_cuda_provider_fails(model_repository: Path) -> None:
    with pytest.raises(
        BackendUnavailableError,
        match="FOCUS_REQUIRE_GPU=true but this onnxruntime has no CUDAExecutionProvider",
    ):
        create_backend(
            _entry(model_repository), backend="onnxruntime", device="cuda", require_gpu=True
        )


def test_auto_on_cuda_with_require_gpu_lists_every_reason(model_repository: Path) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        create_backend(_entry(model_repository), backend="auto", device="cuda", require_gpu=True)
    message = str(info.value)
    assert message.startswith("FOCUS_REQUIRE_GPU=true but no GPU backend can serve camouflage: ")
    assert "tensorrt: " in message and "onnxruntime: no CUDAExecutionProvider" in message


def test_auto_on_cuda_without_gpu_falls_back_to_cpu_with_warning(model_repository, caplog):
    with caplog.at_level(logging.WARNING):
        backend = create_backend(_entry(model_repository, "salient"), backend="auto", device="cuda")
    assert (backend.name, backend.device) == ("onnxruntime", "cpu")
    assert "no GPU backend for salient" in caplog.text


def test_onnx_metadata_for_another_task_is_refused(model_repository: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "shadow").mkdir(parents=True)
    make_card("shadow", "tiny").save(repo / "shadow")
    shutil.copy(model_repository / "camouflage" / "model.onnx", repo / "shadow")  # says camouflage
    with pytest.raises(ValueError, match="the ONNX metadata says task='camouflage'"):
        create_backend(scan_repository(repo)["shadow"], backend="onnxruntime")


def test_onnx_graph_breaking_the_contract_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ValueError, match="do not follow the FOCUS ONNX contract"):
        OnnxRuntimeBackend(tmp_path / "model.onnx", make_card("salient", "tiny"))


def test_onnxruntime_outputs_follow_the_contract(model_repository: Path) -> None:
    backend = create_backend(_entry(model_repository), backend="onnxruntime")
    image = prepare(image_bytes(240, 320), backend.card, 10**8).inputs
    batch = np.stack([image.image, image.image])
    edges = np.stack([image.edges, image.edges])
    class_probs, mask_logits = backend.infer(batch, edges)
    hp, wp = image.padded_size
    assert class_probs.shape == (2, 2, 2) and class_probs.dtype == np.float32
    assert mask_logits.shape == (2, 2, hp // 4, wp // 4) and mask_logits.dtype == np.float32


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_backend_matches_onnxruntime(model_repository: Path) -> None:
    entry = _entry(model_repository)
    torch_backend = create_backend(entry, backend="torch")
    ort_backend = create_backend(entry, backend="onnxruntime")
    assert (torch_backend.name, torch_backend.device) == ("torch", "cpu")
    image = prepare(image_bytes(240, 320, seed=5), entry.card, 10**8)
    inputs = (image.inputs.image[None], image.inputs.edges[None])
    masks = []
    for backend in (torch_backend, ort_backend):
        class_probs, mask_logits = backend.infer(*inputs)
        masks.append(compute_mask(class_probs[0], mask_logits[0], image, with_binary=False).soft)
    assert np.abs(masks[0] - masks[1]).max() <= 1e-4


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_auto_uses_torch_when_only_a_checkpoint_exists(model_repository, tmp_path) -> None:
    repo = _copy_task(model_repository, tmp_path, ("model.safetensors",))
    backend = create_backend(scan_repository(repo)["camouflage"], backend="auto")
    assert (backend.name, backend.artefact.name) == ("torch", "model.safetensors")


# ------------------------------------------------------------------------------ TensorRT


def _engine(directory: Path, gpu: str = GPU, trt: str = TRT, meta: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.engine"
    path.write_bytes(b"not a real engine")
    if meta:
        (directory / "model.engine.json").write_text(
            json.dumps(
                {"gpu_name": gpu, "tensorrt_version": trt, "precision": "fp16", "max_batch": 8}
            )
        )
    return path


def test_engine_for_another_gpu_is_refused(tmp_path: Path) -> None:
    path = _engine(tmp_path, gpu="NVIDIA A10G")
    with pytest.raises(EngineMismatchError) as info:
        check_engine_compatibility(
            path, EngineSidecar.load(path), gpu_name=GPU, tensorrt_version=TRT
        )
    assert str(info.value) == (
        f"refusing TensorRT engine {path}: it was built for GPU 'NVIDIA A10G', this is "
        f"'{GPU}'. Engines only run on the GPU model and TensorRT version they were built with; "
        "rebuild it here with `focus export tensorrt` (or serve model.onnx with "
        "FOCUS_BACKEND=onnxruntime)"
    )


def test_engine_for_another_tensorrt_version_is_refused(tmp_path: Path) -> None:
    path = _engine(tmp_path, trt="10.0.1")
    with pytest.raises(
        EngineMismatchError, match="built with TensorRT 10.0.1, this is TensorRT 10.13"
    ):
        select_engine([path], gpu_name=GPU, tensorrt_version=TRT)


def test_engine_without_metadata_is_refused(tmp_path: Path) -> None:
    path = _engine(tmp_path, meta=False)
    with pytest.raises(EngineMismatchError, match="no model.engine.json beside the engine"):
        select_engine([path], gpu_name=GPU, tensorrt_version=TRT)


def test_engine_cache_is_searched_after_the_repository(tmp_path: Path) -> None:
    task_dir, cache = tmp_path / "repo" / "camouflage", tmp_path / "cache"
    _engine(task_dir, gpu="NVIDIA A10G")
    cached = _engine(cache / "camouflage" / "3")
    _engine(cache / "camouflage" / "2")  # another version's engine is never a candidate
    candidates = engine_candidates(task_dir, cache, "camouflage", 3)
    assert candidates == [task_dir / "model.engine", cached]
    path, meta = select_engine(candidates, gpu_name=GPU, tensorrt_version=TRT)
    assert path == cached and meta.max_batch == 8 and meta.precision == "fp16"


def test_tensorrt_backend_without_tensorrt_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not available .*\[tensorrt\]"):
        TensorRTBackend([_engine(tmp_path)], make_card("salient", "tiny"))


def test_tensorrt_named_without_engine_fails(model_repository: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="no model.engine for camouflage"):
        create_backend(
            _entry(model_repository), backend="tensorrt", device="cuda", engine_cache=tmp_path
        )


# ---------------------------------------------------------------------------- repository


def test_repository_scan_skips_what_it_cannot_serve(model_repository, tmp_path, caplog) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / "salient", repo / "sod")  # alias directory name
    (repo / "notes").mkdir()
    (repo / "shadow").mkdir()  # no focus.json
    (repo / "defocus").mkdir()
    make_card("defocus", "tiny").save(repo / "defocus")  # no artefact
    with caplog.at_level(logging.WARNING):
        entries = scan_repository(repo)
    assert list(entries) == ["salient"]
    assert entries["salient"].artefacts == ("model.onnx",)
    for reason in ("notes: not a task name", "shadow: no focus.json", "defocus: none of"):
        assert reason in caplog.text


def test_repository_without_models_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as info:
        scan_repository(tmp_path)
    assert str(info.value) == (
        f"no models in {tmp_path}: expected <task>/<version>/focus.json (or <task>/focus.json) "
        "with one of model.engine, model.onnx, model.safetensors"
    )
    with pytest.raises(RepositoryError, match="is not a directory"):
        scan_repository(tmp_path / "missing")


def test_repository_card_for_another_task_is_an_error(model_repository, tmp_path) -> None:
    shutil.copytree(model_repository / "salient", tmp_path / "shadow")
    with pytest.raises(RepositoryError, match="focus.json is for task 'salient', not 'shadow'"):
        scan_repository(tmp_path)


# ---------------------------------------------------------------------------- torch-free


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_onnxruntime_service_never_imports_torch(model_repository, tmp_path, backend) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(image_bytes(120, 160))
    code = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        import service.cli
        from service.app import create_app
        from service.settings import Settings

        settings = Settings(model_repository={str(model_repository)!r}, backend={backend!r})
        with TestClient(create_app(settings)) as client:
            for task in ("camouflage", "salient"):
                response = client.post(
                    f"/segment/{{task}}?format=json",
                    content=open({str(image)!r}, "rb").read(),
                    headers={{"content-type": "image/png"}},
                )
                assert response.status_code == 200, response.text
                assert response.json()["model"]["backend"] == "onnxruntime"
        print("torch imported" if "torch" in sys.modules else "torch-free")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "torch-free"
