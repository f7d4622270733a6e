"""The exported ensemble served by a real tritonserver (nvidia-pytriton's, on loopback).

The bundled demo model (model_repository/salient) is exported with
``--model-backend python-onnxruntime`` (the wheel's server has no ONNX Runtime backend) and
served by ``export.triton_local``; a V2 HTTP client (tritonclient) sends encoded images and
gets PNG masks back, which must equal ``focus segment``'s for the same files. The server and
its packages are cached under ~/.cache/focus-triton: the first run downloads them (about a
minute), and the module is skipped with the reason where that cannot happen.
"""

from __future__ import annotations

import io
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from export.triton import TritonOptions, write_triton_repository
from export.triton_local import LocalTritonServer, TritonUnavailableError, install
from focus_cli import main
from models.contract import ENSEMBLE_INPUT, ENSEMBLE_OUTPUT
from models.synth import sample

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repository" / "salient"
VERSION = 2  # served as version 2, so the Triton version directories must say 2
ENSEMBLE, NETWORK = "salient_ensemble", "salient"
BURST = 12


@dataclass(frozen=True)
class Served:
    server: LocalTritonServer
    client: triton_http.InferenceServerClient
    source: Path  # our model repository (salient/2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not (DEMO / "model.onnx").is_file():
        pytest.skip(f"no demo model at {DEMO}")
    try:
        found = install()
    except TritonUnavailableError as exc:
        pytest.skip(f"no local tritonserver: {exc}")
    root = tmp_path_factory.mktemp("triton")
    source = root / "repo"
    (source / "salient").mkdir(parents=True)
    shutil.copytree(DEMO, source / "salient" / str(VERSION))
    options = TritonOptions(
        model_backend="python-onnxruntime",
        kind="KIND_CPU",
        max_queue_delay_us=300_000,  # generous: the burst must batch even on a loaded machine
        python_path=(str(found.packages), str(ROOT)),
        intra_op_threads=1,
    )
    write_triton_repository(source, root / "triton", options)
    server = LocalTritonServer(found, root / "triton", log_path=root / "tritonserver.log")
    server.start()
    client = triton_http.InferenceServerClient(server.http_url, concurrency=BURST)
    try:
        yield Served(server=server, client=client, source=source)
    finally:
        client.close()
        server.stop()


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _images() -> dict[str, bytes]:
    """Different sizes (so different padded shapes) and formats."""
    images = {}
    for i, (size, fmt) in enumerate(((160, "PNG"), (224, "JPEG"), (300, "WEBP"))):
        rgb, _ = sample("salient", i, seed=3, size=size)
        rgb = rgb[: size * 3 // 4] if i == 1 else rgb  # one landscape crop
        images[f"img{i}.{fmt.lower()}"] = _encode(rgb, fmt)
    return images


def _request(data: bytes) -> list[triton_http.InferInput]:
    tensor = triton_http.InferInput(ENSEMBLE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.asarray([[data]], dtype=np.object_))
    return [tensor]


def _mask(result: triton_http.InferResult) -> np.ndarray:
    png = result.as_numpy(ENSEMBLE_OUTPUT)
    assert png.shape == (1, 1)
    with Image.open(io.BytesIO(png[0, 0])) as img:
        assert (img.format, img.mode) == ("PNG", "L")
        return np.asarray(img).astype(np.int16)


def _segment(source: Path, images: dict[str, bytes], work: Path) -> dict[str, np.ndarray]:
    """``focus segment``'s masks of the same files with the same model."""
    (work / "in").mkdir(parents=True)
    for name, data in images.items():
        (work / "in" / name).write_bytes(data)
    args = ["segment", "--task", "salient", "--input", str(work / "in"), "--output"]
    # one named backend: Triton runs ONNX Runtime fp32, and `auto` could pick a gated variant
    rc = main([*args, str(work / "out"),
               "--model-repository", str(source), "--backend", "onnxruntime"])  # fmt: skip
    assert rc == 0
    masks = {}
    for name in images:
        with Image.open(work / "out" / Path(name).with_suffix(".png")) as img:
            masks[name] = np.asarray(img).astype(np.int16)
    return masks


def _batches(client: triton_http.InferenceServerClient, model: str) -> tuple[int, dict, int]:
    """(inference count, {batch size: executions}, execution count) of one model."""
    stats = client.get_inference_statistics(model, str(VERSION))["model_stats"][0]
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    return int(stats["inference_count"]), sizes, int(stats["execution_count"])


def _metric(served: Served, name: str, model: str, version: int) -> float:
    """The sum over every other label (e.g. a failure's reason) of one model version's series."""
    with urllib.request.urlopen(served.server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (name, f"{name}_total") and (
                s.labels.get("model"),
                s.labels.get("version"),
            ) == (model, str(version)):
                total += s.value
    return total


def test_the_ensemble_returns_focus_segments_masks(served: Served, tmp_path: Path) -> None:
    images = _images()
    expected = _segment(served.source, images, tmp_path)
    for name, data in images.items():
        mask = _mask(served.client.infer(ENSEMBLE, _request(data)))
        assert mask.shape == expected[name].shape, name
        assert int(np.abs(mask - expected[name]).max()) <= 1, name
        assert len(np.unique(mask)) > 10, name  # a real soft mask, not a constant image
    metadata = served.client.get_model_metadata(ENSEMBLE)
    assert (metadata["versions"], metadata["inputs"], metadata["outputs"]) == (
        [str(VERSION)],
        [{"name": ENSEMBLE_INPUT, "datatype": "BYTES", "shape": [-1, 1]}],
        [{"name": ENSEMBLE_OUTPUT, "datatype": "BYTES", "shape": [-1, 1]}],
    )


def test_a_concurrent_burst_is_batched_on_the_network_step(served: Served, tmp_path: Path) -> None:
    """BURST requests of one padded shape at once: the dynamic batcher must merge them, and
    every mask must still be the one focus segment makes for that image."""
    rgbs = [sample("salient", 10 + i, seed=5, size=192)[0] for i in range(BURST)]
    images = {f"b{i}.png": _encode(rgb, "PNG") for i, rgb in enumerate(rgbs)}
    expected = _segment(served.source, images, tmp_path)
    count0, sizes0, executions0 = _batches(served.client, NETWORK)
    ensemble0 = _batches(served.client, ENSEMBLE)[0]
    pending = {
        name: served.client.async_infer(ENSEMBLE, _request(data)) for name, data in images.items()
    }
    for name, request in pending.items():
        assert int(np.abs(_mask(request.get_result()) - expected[name]).max()) <= 1, name
    count1, sizes1, executions1 = _batches(served.client, NETWORK)
    delta = {b: n - sizes0.get(b, 0) for b, n in sizes1.items() if n != sizes0.get(b, 0)}
    assert count1 - count0 == BURST
    assert sum(b * n for b, n in delta.items()) == BURST
    assert max(delta) >= 2, f"no batch formed: {delta}"
    assert executions1 - executions0 < BURST
    assert _batches(served.client, ENSEMBLE)[0] - ensemble0 == BURST


def test_success_and_failure_metrics_count_requests(served: Served) -> None:
    """``nv_inference_request_success`` / ``_failure``, scraped from /metrics.

    Triton's ensemble scheduler labels the ensemble's own series ``version="1"`` whatever its
    version (its metric reporter is created with a hard-coded 1; triton-inference-server/core
    PR #343 discusses it); the composing models carry their real version.
    """
    data = next(iter(_images().values()))
    series = {
        "ensemble ok": ("nv_inference_request_success", ENSEMBLE, 1),
        "ensemble failed": ("nv_inference_request_failure", ENSEMBLE, 1),
        "network ok": ("nv_inference_request_success", NETWORK, VERSION),
    }
    before = {key: _metric(served, *args) for key, args in series.items()}
    for _ in range(3):
        served.client.infer(ENSEMBLE, _request(data))
    with pytest.raises(InferenceServerException):
        served.client.infer(ENSEMBLE, _request(b"GIF89a, but not really"))
    expected = {"ensemble ok": 3, "ensemble failed": 1, "network ok": 3}
    # Triton counts a request after it has answered it: the last one's increment can land
    # after our scrape, so scrape until the counts settle (or 10 s pass), then compare exactly
    deadline = time.monotonic() + 10
    while True:
        moved = {key: _metric(served, *args) - before[key] for key, args in series.items()}
        if moved == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert moved == expected


def test_undecodable_bytes_are_a_400_with_the_decoders_message(served: Served) -> None:
    with pytest.raises(InferenceServerException) as caught:
        served.client.infer(ENSEMBLE, _request(b"not an image at all"))
    assert caught.value.status() == "400"
    assert caught.value.message() == (
        f"in ensemble '{ENSEMBLE}', cannot identify the image; supported formats: PNG, JPEG, "
        "WebP, BMP, TIFF, GIF"
    )
