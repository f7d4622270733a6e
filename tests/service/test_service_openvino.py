"""Precision variants end to end on the real tiny model: the OpenVINO backend, the int8 export and
its gate in focus.json, refusal of a failed (deliberately broken) variant with its numbers, and
``FOCUS_BACKEND=auto`` choosing by gate and measured speed. Real runtimes, nothing mocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.config import ModelCard
from models.contract import INT8_ONNX_FILE, ONNX_FILE
from models.precision import GateRefusedError, find_variant
from models.processing import postprocess, preprocess_with_card
from models.repository import scan_repository

pytest.importorskip("openvino", reason="the OpenVINO backend needs openvino")

ROOT = Path(__file__).resolve().parents[2]
TASK = "salient"  # the task the tiny model was trained on: gates measure in-distribution
TORCH_TASK = "camouflage"  # the one with model.safetensors in the test repository


def _entry(repo: Path):
    return scan_repository(repo)[TASK]


def _images(card: ModelCard) -> list:
    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (150, 200, 3), dtype=np.uint8) for _ in range(2)]
    return [preprocess_with_card(x, card) for x in rgb]


def _masks(backend, prepared) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for p in prepared:
        probs, logits = backend.infer(p.image[None], p.edges[None])
        out.append(postprocess(probs[0], logits[0], p.padded_size, p.resized_size,
                               p.original_size))  # fmt: skip
    return out


def _break_graph(source: Path, target: Path) -> None:
    """A 'variant' whose weights are wrong: every large float initializer scaled by 1.7."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(source))
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 256:
            init.CopyFrom(numpy_helper.from_array(array * np.float32(1.7), init.name))
    onnx.save(proto, str(target))


@pytest.fixture(scope="module")
def variant_repo(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """camouflage with model.onnx, an int8 variant made by the CLI, and OpenVINO fp32/bf16 gates
    (soft-mask gate: ``--untrained``, so the test does not hinge on the IoU of a 1-minute model)."""
    from focus_cli import main

    repo = tmp_path_factory.mktemp("variant_repo")
    directory = repo / TASK
    directory.mkdir()
    for name in ("focus.json", ONNX_FILE):
        shutil.copy(model_repository / TASK / name, directory / name)
    onnx_path = str(directory / ONNX_FILE)
    common = ["--untrained", "--threads", "1"]
    assert main(["export", "onnx", "--onnx", onnx_path, "--precision", "int8", *common]) in (0, 1)
    assert main(["export", "openvino", "--onnx", onnx_path, "--no-ir", *common]) in (0, 1)
    return repo


def test_int8_export_writes_a_gated_card(variant_repo: Path) -> None:
    from models.precision import file_sha256

    directory = variant_repo / TASK
    assert (directory / INT8_ONNX_FILE).stat().st_size < (directory / ONNX_FILE).stat().st_size
    raw = json.loads((directory / "focus.json").read_text())["precision_variants"]
    assert set(raw) == {"onnxruntime-int8", "openvino-fp32", "openvino-bf16"}
    card = ModelCard.load(directory)
    int8 = find_variant(card.variants, "onnxruntime", "int8")
    assert int8 is not None and int8.gate is not None
    gate = int8.gate
    assert gate.images >= 6 and gate.reference == "onnxruntime fp32 model.onnx"
    assert 0 < gate.soft_mean_abs <= gate.soft_max_abs <= 1  # int8 moves the mask, a little
    assert gate.iou_enforced is False and gate.passed == (gate.soft_mean_abs <= 0.01)
    assert int8.recipe["mode"] == "dynamic" and int8.recipe["fp32_sha256"] == file_sha256(
        directory / ONNX_FILE
    )
    ov32 = find_variant(card.variants, "openvino", "fp32")
    assert ov32 is not None and ov32.gate is not None and ov32.gate.soft_max_abs < 1e-4
    assert ov32.recipe["inference_precision"] == "f32"


def test_openvino_backend_matches_onnxruntime_fp32(variant_repo: Path, tmp_path: Path) -> None:
    from service.backends.factory import VariantOptions, create_backend

    entry = _entry(variant_repo)
    options = VariantOptions(openvino_cache=tmp_path / "ov")
    ov = create_backend(entry, backend="openvino", intra_op_threads=1, variants=options)
    ort = create_backend(entry, backend="onnxruntime", intra_op_threads=1)
    assert (ov.name, ov.precision, ov.inference_precision) == ("openvino", "fp32", "f32")
    assert ov.loaded_from_cache is False
    prepared = _images(entry.card)
    for (soft_a, bin_a), (soft_b, bin_b) in zip(_masks(ov, prepared), _masks(ort, prepared),
                                                strict=True):  # fmt: skip
        assert np.abs(soft_a - soft_b).max() < 1e-4
        assert (bin_a != bin_b).sum() <= 2
    ov.close()
    # a restart imports the compiled model from the on-disk cache instead of compiling
    again = create_backend(entry, backend="openvino", intra_op_threads=1, variants=options)
    assert again.loaded_from_cache is True
    assert any((tmp_path / "ov" / TASK / "1").iterdir())
    again.close()
    ort.close()


def test_bf16_variant_is_served_or_refused_by_its_gate(variant_repo: Path) -> None:
    from service.backends.factory import VariantOptions, create_backend

    entry = _entry(variant_repo)
    gate = find_variant(entry.card.variants, "openvino", "bf16").gate
    assert gate.soft_mean_abs > 0  # bf16 really ran when the gate was measured
    options = VariantOptions(precision="bf16")
    if not gate.passed:
        with pytest.raises(GateRefusedError, match=f"soft mean .diff. {gate.soft_mean_abs:.3g}"):
            create_backend(entry, backend="openvino", variants=options)
        return
    bf16 = create_backend(entry, backend="openvino", intra_op_threads=1, variants=options)
    assert bf16.precision == "bf16" and bf16.inference_precision == "bf16"
    assert bf16.gate.startswith("gate passed: soft max |diff|")
    bf16.close()


@pytest.fixture
def broken_repo(variant_repo: Path, tmp_path: Path) -> Path:
    """The variant repository with model.int8.onnx replaced by a broken graph, gated for real."""
    from export.precision import measure_gate, record_variant
    from models.precision import Variant, file_sha256
    from models.runtime.onnxruntime import OnnxRuntimePredictor

    repo = tmp_path / "repo"
    shutil.copytree(variant_repo, repo)
    directory = repo / TASK
    _break_graph(directory / ONNX_FILE, directory / INT8_ONNX_FILE)
    gate = measure_gate(
        OnnxRuntimePredictor(directory / ONNX_FILE, intra_op_threads=1),
        OnnxRuntimePredictor(directory / INT8_ONNX_FILE, intra_op_threads=1),
        ModelCard.load(directory),
        reference_name="onnxruntime fp32 model.onnx",
        runtime_version="test",
        trained=True,
    )
    assert not gate.passed
    recipe = {"mode": "broken on purpose", "fp32_sha256": file_sha256(directory / ONNX_FILE)}
    record_variant(directory, Variant("onnxruntime", "int8", INT8_ONNX_FILE, gate, recipe))
    return repo


def test_failed_gate_is_refused_with_its_numbers(broken_repo: Path) -> None:
    from service.backends.factory import VariantOptions, create_backend

    entry = _entry(broken_repo)
    gate = find_variant(entry.card.variants, "onnxruntime", "int8").gate
    with pytest.raises(GateRefusedError) as info:
        create_backend(entry, backend="onnxruntime", variants=VariantOptions(precision="int8"))
    message = str(info.value)
    assert "onnxruntime-int8 failed its accuracy gate" in message
    assert f"soft mean |diff| {gate.soft_mean_abs:.3g}" in message
    assert "FOCUS_FORCE_UNGATED" in message
    forced = create_backend(
        entry,
        backend="onnxruntime",
        intra_op_threads=1,
        variants=VariantOptions(precision="int8", force_ungated=True),
    )
    assert forced.precision == "int8" and forced.artefact.name == INT8_ONNX_FILE
    assert forced.gate.startswith("FORCED despite")
    forced.close()


def test_gate_of_another_model_onnx_is_refused(variant_repo: Path, tmp_path: Path) -> None:
    from service.backends.factory import VariantOptions, create_backend

    repo = tmp_path / "repo"
    shutil.copytree(variant_repo, repo)
    _break_graph(variant_repo / TASK / ONNX_FILE, repo / TASK / ONNX_FILE)  # model.onnx changed
    with pytest.raises(GateRefusedError, match="measured against another model.onnx"):
        create_backend(
            _entry(repo), backend="openvino", variants=VariantOptions(precision="bf16")
        )


def test_auto_picks_the_fastest_gated_variant(broken_repo: Path, tmp_path: Path) -> None:
    from service.backends.factory import VariantOptions, create_backend

    backend = create_backend(
        _entry(broken_repo),
        backend="auto",
        intra_op_threads=1,
        variants=VariantOptions(openvino_cache=tmp_path / "ov", timed_runs=2),
    )
    selection = backend.selection
    assert "onnxruntime-int8: refused:" in selection  # the broken variant is never timed
    timed = {}
    for part in selection.split("; ")[1:]:
        name, _, rest = part.partition(": ")
        if rest.endswith(" ms"):
            timed[name] = float(rest[:-3])
    bf16 = find_variant(_entry(broken_repo).card.variants, "openvino", "bf16").gate
    expected = {"onnxruntime-fp32", "openvino-fp32"} | ({"openvino-bf16"} if bf16.passed else set())
    assert set(timed) == expected  # every gated variant timed, no failed one
    chosen = f"{backend.name}-{backend.precision}"
    assert selection.startswith(f"auto: {chosen} (fastest at")
    assert timed[chosen] == min(timed.values())
    backend.close()


def test_torch_is_never_imported_with_openvino(variant_repo: Path, tmp_path: Path) -> None:
    """`focus segment --backend openvino` and the app's model loading, in a fresh interpreter."""
    code = f"""
import sys
from focus_cli import main
rc = main(["segment", "--task", "{TASK}", "--input", sys.argv[1], "--output", sys.argv[2],
           "--backend", "openvino", "--precision", "bf16", "--model-repository", sys.argv[3]])
assert rc == 0, rc
from service.settings import Settings
from service.state import default_backend_factory
from models.repository import scan_repository
entry = scan_repository(sys.argv[3])["{TASK}"]
backend = default_backend_factory(entry, Settings(backend="openvino", openvino_cache="",
                                                  model_repository=sys.argv[3]))
assert backend.name == "openvino", backend
print("torch imported:", "torch" in sys.modules)
"""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(image)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOCUS_")}
    env["FOCUS_OPENVINO_CACHE"] = str(tmp_path / "ov")
    result = subprocess.run(
        [sys.executable, "-c", code, str(image), str(tmp_path / "out"), str(variant_repo)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch imported: False" in result.stdout
    assert (tmp_path / "out" / "in.png").is_file()


def test_torch_backend_bf16_autocast(model_repository: Path) -> None:
    from service.backends.factory import VariantOptions, create_backend

    entry = scan_repository(model_repository)[TORCH_TASK]
    fp32 = create_backend(entry, backend="torch", intra_op_threads=1)
    bf16 = create_backend(
        entry, backend="torch", intra_op_threads=1, variants=VariantOptions(precision="bf16")
    )
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert "no recorded gate" in bf16.gate
    prepared = _images(entry.card)
    image, edges = prepared[0].image[None], prepared[0].edges[None]
    logits_32 = fp32.infer(image, edges)[1]
    logits_16 = bf16.infer(image, edges)[1]
    assert logits_16.dtype == np.float32
    difference = np.abs(logits_32 - logits_16)
    assert 0 < difference.max() < 0.5 * np.abs(logits_32).max()  # bf16 really ran, and close
    for (soft_a, _), (soft_b, _) in zip(_masks(fp32, prepared), _masks(bf16, prepared),
                                        strict=True):  # fmt: skip
        assert np.abs(soft_a - soft_b).mean() < 0.01
    with pytest.raises(Exception, match="fp16 autocast needs CUDA"):
        create_backend(entry, backend="torch", variants=VariantOptions(precision="fp16"))


def test_a_model_released_on_another_thread_leaves_signals_working(model_repository: Path) -> None:
    """OpenVINO's CPU plugin swaps the compiling thread's signal stack and unmaps it on release.

    Compiled on the main thread and garbage-collected on another (a reload, the executor), it
    left the main thread's signal stack unmapped: the next Python signal handler (SIGTERM in
    ``focus serve``, SIGCHLD here) killed the process with SIGSEGV. It did so to this test suite.
    """
    code = """
import faulthandler, gc, signal, subprocess, sys, threading
faulthandler.enable()  # an alternate signal stack on the main thread, as pytest and uvicorn have
from models.runtime.openvino import OpenVinoPredictor
held = [OpenVinoPredictor(sys.argv[1], precision="fp32", threads=1)]
release = threading.Thread(target=lambda: (held.clear(), gc.collect()))
release.start()
release.join()
signal.signal(signal.SIGCHLD, lambda *args: None)
subprocess.run(["true"], check=True)  # its SIGCHLD runs the handler on the main thread
print("signal handled")
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_repository / TASK / ONNX_FILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "signal handled" in result.stdout
