"""Export checks that need a CUDA device (``-m gpu``); each skips with the reason without one."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_pipeline import TinyPipeline

from export.parity import FP16, check_parity, onnxruntime_predictor, torch_predictor
from models.config import ModelCard

pytestmark = pytest.mark.gpu


def _require_tensorrt_and_cuda() -> str:
    from export.tensorrt import TensorRTUnavailableError, cuda_device_name, import_tensorrt

    try:
        import_tensorrt()
        return cuda_device_name()
    except (TensorRTUnavailableError, ImportError) as exc:
        pytest.skip(str(exc).split(";")[0])


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_engine_matches_onnxruntime(
    tiny_pipeline: TinyPipeline, tmp_path: Path, precision: str
) -> None:
    gpu = _require_tensorrt_and_cuda()
    from export.tensorrt import build_engine, check_engine_parity
    from models.contract import EngineSidecar

    engine = tmp_path / "model.engine"
    info = build_engine(
        tiny_pipeline.onnx,
        engine,
        precision=precision,
        max_batch=4,
        timing_cache=tmp_path / "timing.cache",
    )
    assert info.gpu_name == gpu and EngineSidecar.load(engine).max_batch == 4
    report = check_engine_parity(tiny_pipeline.onnx, engine, precision)
    assert report.soft_mean_abs <= 1e-2 and report.min_iou >= 0.99


def test_onnxruntime_cuda_provider_matches_cpu(tiny_pipeline: TinyPipeline) -> None:
    from models.runtime.onnxruntime import cuda_provider_available

    if not cuda_provider_available():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    card = ModelCard.load(tiny_pipeline.entry)
    report = check_parity(
        onnxruntime_predictor(tiny_pipeline.onnx),
        onnxruntime_predictor(tiny_pipeline.onnx, device="cuda"),
        card,
        FP16,
    )
    assert report.soft_mean_abs <= 1e-2


def test_pytorch_cuda_matches_onnxruntime_cpu(tiny_pipeline: TinyPipeline) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from models.checkpoint import load_checkpoint

    model, card = load_checkpoint(tiny_pipeline.entry)
    report = check_parity(
        onnxruntime_predictor(tiny_pipeline.onnx), torch_predictor(model, device="cuda"), card, FP16
    )
    assert report.soft_mean_abs <= 1e-2
