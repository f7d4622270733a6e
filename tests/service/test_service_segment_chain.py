"""``service.pipeline.segment_bytes``: the one decode -> infer -> encode chain that both
``POST /segment`` and ``focus segment`` run (on the bundled salient demo model)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_testing import image_bytes

from models.repository import scan_repository
from service.backends.factory import create_backend
from service.imaging import ImageDecodeError
from service.pipeline import Inference, SegmentOptions, segment_bytes

DEMO = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture(scope="module")
def backend():
    made = create_backend(scan_repository(DEMO)["salient"], backend="onnxruntime",
                          intra_op_threads=1)  # fmt: skip
    yield made
    made.close()


def _infer(backend, seen: list):
    async def infer(image) -> Inference:
        seen.append(image.inputs.padded_size)
        probs, logits = backend.infer(image.inputs.image[None], image.inputs.edges[None])
        return Inference(probs[0], logits[0], queue_s=0.25, compute_s=0.5, batch_size=3)

    return infer


def test_chain_encodes_the_requested_format_with_its_timings(backend) -> None:
    seen: list = []
    stages: list[str] = []
    data = image_bytes(90, 130, seed=3)
    started = time.perf_counter() - 1.0  # e.g. the body took a second to arrive
    result = asyncio.run(segment_bytes(
        data, backend.card, SegmentOptions(fmt="png", threshold=0.5), infer=_infer(backend, seen),
        max_pixels=10**7, observe=lambda stage, s: stages.append(stage), started=started,
    ))  # fmt: skip
    mask = np.asarray(Image.open(io.BytesIO(result.encoded.content)))
    assert mask.shape == (90, 130) and set(np.unique(mask)) <= {0, 255}
    assert seen == [result.image.inputs.padded_size] and stages == ["preprocess", "postprocess"]
    t = result.timing
    assert (t.queue_ms, t.compute_ms, t.batch_size) == (250.0, 500.0, 3)
    assert t.total_ms >= 1000.0 and t.preprocess_ms > 0 and t.postprocess_ms > 0


def test_chain_json_carries_the_binary_statistics(backend) -> None:
    result = asyncio.run(segment_bytes(
        image_bytes(64, 64, seed=4), backend.card, SegmentOptions(fmt="json"),
        infer=_infer(backend, []), max_pixels=10**7,
    ))  # fmt: skip
    assert result.encoded.media_type == "application/json"
    assert result.encoded.mask_png is not None and result.encoded.stats is not None


def test_chain_raises_the_decoders_error_before_inferring(backend) -> None:
    seen: list = []
    with pytest.raises(ImageDecodeError):
        asyncio.run(segment_bytes(
            b"not an image", backend.card, SegmentOptions(), infer=_infer(backend, seen),
            max_pixels=10**7,
        ))  # fmt: skip
    assert seen == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fmt": "gif"}, "unknown format 'gif'"), ({"threshold": 1.5}, "between 0 and 1")],
)
def test_options_are_validated(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SegmentOptions(**kwargs)


def _disc_png(height: int, width: int, radius: int) -> bytes:
    """A bright disc on dark noise: the salient demo model finds it (see test_service_refine)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    rgb[(yy - 0.45 * height) ** 2 + (xx - 0.55 * width) ** 2 < radius * radius] = (250, 200, 40)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_chain_runs_the_zoom_pass_through_the_same_infer(backend) -> None:
    seen: list = []
    data = _disc_png(900, 1200, 60)  # a small object: the zoom pass runs
    options = SegmentOptions(fmt="png", zoom="auto", refine="guided", encoding="webp")
    result = asyncio.run(segment_bytes(
        data, backend.card, options, infer=_infer(backend, seen), max_pixels=10**7,
    ))  # fmt: skip
    assert len(seen) == 2 and seen[0] == result.image.inputs.padded_size  # image, then crop
    zoom = result.refinement.zoom
    assert result.refinement.refine == "guided" and zoom is not None and zoom.ran
    assert zoom.crop is not None and zoom.crop.width < 1200 and zoom.crop.height < 900
    t = result.timing  # both passes' queue and compute, the first pass's batch
    assert (t.queue_ms, t.compute_ms, t.batch_size) == (500.0, 1000.0, 3)
    assert result.encoded.media_type == "image/webp"
    assert Image.open(io.BytesIO(result.encoded.content)).size == (1200, 900)
    plain = asyncio.run(segment_bytes(
        data, backend.card, SegmentOptions(fmt="png", encoding="webp"),
        infer=_infer(backend, []), max_pixels=10**7,
    ))  # fmt: skip
    assert plain.refinement.zoom is None and plain.encoded.content != result.encoded.content
