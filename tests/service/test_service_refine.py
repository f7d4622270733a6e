"""Full-resolution options of ``/segment`` through the real app and the bundled demo models
(``model_repository/``, tiny preset, short side 128): refine=guided, zoom=auto,
format=rgba&decontaminate=true, format=webp, encoding=webp|jpeg, and the network size and
scale every response states. Nothing is mocked."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.processing import resized_size
from models.refine import OFFERED, refusal

ROOT = Path(__file__).resolve().parents[2]
DEMO_REPOSITORY = ROOT / "model_repository"
PNG = {"content-type": "image/png"}


def blob_png(height: int, width: int, radius: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A bright disc on dark noise (the salient demo model finds it), as PNG and as RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - 0.45 * height) ** 2 + (xx - 0.55 * width) ** 2 < radius * radius
    rgb = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    rgb[disc] = (250, 200, 40)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue(), rgb


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture(scope="module")
def demo_client() -> Iterator[Any]:
    if not (DEMO_REPOSITORY / "salient" / "model.onnx").is_file():
        pytest.skip("the bundled demo models are not in model_repository/")
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    # one named backend: `auto` would time the demo models' gated variants and could pick another
    app = create_app(
        Settings(model_repository=DEMO_REPOSITORY, backend="onnxruntime", intra_op_threads=1)
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def photo() -> tuple[bytes, np.ndarray]:
    return blob_png(480, 640, 150)


def post(client: Any, query: str, data: bytes, task: str = "salient") -> Any:
    return client.post(f"/segment/{task}?{query}", content=data, headers=PNG)


# ------------------------------------------------------------------ network size, every time


@pytest.mark.parametrize("query", ["format=png", "format=webp", "format=overlay&encoding=jpeg"])
def test_every_image_response_states_the_network_size_and_scale(demo_client, photo, query):
    response = post(demo_client, query, photo[0])
    assert response.status_code == 200
    h, w = resized_size(480, 640, 128, 512)  # the demo card's input geometry
    assert (h, w) == (128, 171)
    assert response.headers["x-focus-network-size"] == "171x128"
    assert response.headers["x-focus-scale"] == str(round(171 / 640, 6)) == "0.267188"


def test_json_states_the_network_size_and_no_refinement_by_default(demo_client, photo) -> None:
    body = post(demo_client, "format=json", photo[0]).json()
    assert body["network"] == {"width": 171, "height": 128, "scale": round(171 / 640, 6)}
    assert body["refinement"] == {"refine": "none", "zoom": None}


# --------------------------------------------------------------------------------- guided


def test_guided_refinement_keeps_size_and_range_and_sharpens_the_edge(demo_client, photo):
    plain = decode(post(demo_client, "format=png", photo[0]).content)
    response = post(demo_client, "format=png&refine=guided", photo[0])
    assert response.status_code == 200 and response.headers["x-focus-refine"] == "guided"
    guided = decode(response.content)
    assert guided.mode == plain.mode == "L" and guided.size == plain.size == (640, 480)
    p, g = np.asarray(plain) / 255.0, np.asarray(guided) / 255.0
    # Against the exact disc: the boundary moves onto the true edge, and the error within
    # 12 px of it drops.
    yy, xx = np.mgrid[0:480, 0:640]
    distance = np.sqrt((yy - 0.45 * 480) ** 2 + (xx - 0.55 * 640) ** 2) - 150
    truth = distance < 0
    near = np.abs(distance) < 12
    assert boundary_f(g, truth) > boundary_f(p, truth) + 0.1
    assert np.abs(g - truth)[near].mean() < np.abs(p - truth)[near].mean()


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: float = 3.0) -> float:
    """F-measure of the boundary pixels of ``pred > 0.5`` within ``tolerance`` px of truth's."""
    import cv2

    def edge(m: np.ndarray) -> np.ndarray:
        u8 = m.astype(np.uint8)
        return (u8 - cv2.erode(u8, np.ones((3, 3), np.uint8))) > 0

    bp, bt = edge(pred > 0.5), edge(truth)
    to_truth = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, 3)
    to_pred = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, 3)
    precision = float((to_truth[bp] <= tolerance).mean()) if bp.any() else 0.0
    recall = float((to_pred[bt] <= tolerance).mean()) if bt.any() else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_guided_json_reports_it_and_uses_the_refined_mask(demo_client, photo) -> None:
    body = post(demo_client, "format=json&refine=guided", photo[0]).json()
    assert body["refinement"] == {"refine": "guided", "zoom": None}
    mask = np.asarray(decode(base64.b64decode(body["mask_png_base64"])))
    assert mask.shape == (480, 640)
    assert body["foreground_fraction"] == pytest.approx(float((mask > 127.5).mean()), abs=1e-6)


# ------------------------------------------------------------------------- decontamination


def test_decontaminated_cutout_keeps_alpha_and_colours_in_range(demo_client, photo) -> None:
    data, rgb = photo
    plain = np.asarray(decode(post(demo_client, "format=rgba", data).content))
    response = post(demo_client, "format=rgba&decontaminate=true", data)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    clean_img = decode(response.content)
    assert clean_img.mode == "RGBA" and clean_img.size == (640, 480)
    clean = np.asarray(clean_img)
    assert np.array_equal(clean[..., 3], plain[..., 3])  # the mask is untouched
    assert np.array_equal(plain[..., :3], rgb)
    alpha = clean[..., 3]
    opaque = alpha >= 240  # the demo model is never fully sure: its maximum is about 250
    assert opaque.sum() > 10_000
    assert np.abs(clean[..., :3][opaque].astype(int) - rgb[opaque].astype(int)).mean() < 4
    band = (alpha > 20) & (alpha < 235)
    assert band.any()
    # At the soft edge the colours move from the image's (mixed with the dark background)
    # towards the disc's yellow: brighter on average.
    assert clean[..., :3][band].mean() > rgb[band].mean() + 5


def test_decontaminate_needs_a_cutout(demo_client, photo) -> None:
    response = post(demo_client, "format=png&decontaminate=true", photo[0])
    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "validation_error",
            "message": "decontaminate applies to the cut-out (format=rgba) only, not format=png",
        }
    }


# ------------------------------------------------------------------------------------ zoom


def test_zoom_runs_on_a_small_object_and_says_so(demo_client) -> None:
    data, _ = blob_png(900, 1200, 60)
    plain = post(demo_client, "format=json", data).json()
    response = post(demo_client, "format=json&zoom=auto", data)
    assert response.status_code == 200 and response.headers["x-focus-zoom"] == "ran"
    zoom = response.json()["refinement"]["zoom"]
    assert zoom["ran"] is True and zoom["reason"].startswith("the object is small")
    crop = zoom["crop"]
    box = plain["bbox"]  # the crop surrounds the first pass's object
    assert crop["x"] <= box["x"] and crop["y"] <= box["y"]
    assert crop["x"] + crop["width"] >= box["x"] + box["width"]
    assert crop["y"] + crop["height"] >= box["y"] + box["height"]
    assert crop["width"] < 1200 and crop["height"] < 900
    assert response.json()["mask_png_base64"] != plain["mask_png_base64"]
    mask = decode(post(demo_client, "format=png&zoom=auto", data).content)
    assert mask.mode == "L" and mask.size == (1200, 900)


def test_zoom_is_skipped_for_a_large_object(demo_client) -> None:
    data, _ = blob_png(900, 1200, 350)
    response = post(demo_client, "format=json&zoom=auto", data)
    assert response.headers["x-focus-zoom"] == "not-needed"
    zoom = response.json()["refinement"]["zoom"]
    assert zoom["ran"] is False and zoom["crop"] is None and zoom["reason"].startswith("not")
    plain = post(demo_client, "format=json", data).json()
    assert response.json()["mask_png_base64"] == plain["mask_png_base64"]


@pytest.mark.parametrize("task", ["forgery", "defocus"])
def test_zoom_is_refused_where_it_is_not_offered(demo_client, photo, task) -> None:
    assert task not in OFFERED["zoom"]
    response = post(demo_client, "zoom=auto", photo[0], task=task)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message.startswith(f"zoom is not offered for task '{task}': ")
    assert "benchmarks/RESULTS.md" in message


_QUERIES = {"guided": "refine=guided", "zoom": "zoom=auto",
            "decontaminate": "format=rgba&decontaminate=true"}  # fmt: skip
_TASKS = ("salient", "camouflage", "shadow", "defocus", "forgery")


@pytest.mark.parametrize(
    ("option", "task"), [(o, t) for o in _QUERIES for t in _TASKS if t not in OFFERED[o]]
)
def test_options_that_did_not_measure_better_are_refused_with_the_reason(
    demo_client, photo, option, task
) -> None:
    response = post(demo_client, _QUERIES[option], photo[0], task=task)
    assert response.status_code == 422
    assert response.json() == {"error": {"code": "validation_error",
                                         "message": refusal(option, task)}}  # fmt: skip


@pytest.mark.parametrize(
    ("option", "task"), [(o, t) for o in _QUERIES for t in _TASKS if t in OFFERED[o]]
)
def test_options_offered_for_a_task_are_served(demo_client, photo, option, task) -> None:
    response = post(demo_client, _QUERIES[option], photo[0], task=task)
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------------- formats


def test_webp_mask_is_lossless_and_equals_the_png_mask(demo_client, photo) -> None:
    png = np.asarray(decode(post(demo_client, "format=png", photo[0]).content))
    response = post(demo_client, "format=webp", photo[0])
    assert response.headers["content-type"] == "image/webp"
    webp = decode(response.content)
    assert webp.format == "WEBP" and webp.size == (640, 480)
    grey = np.asarray(webp.convert("RGB"))
    for c in range(3):  # WebP has no grey mode: R = G = B = the mask
        assert np.array_equal(grey[..., c], png)


def test_webp_cutout_equals_the_png_cutout(demo_client, photo) -> None:
    png = np.asarray(decode(post(demo_client, "format=rgba", photo[0]).content))
    webp = decode(post(demo_client, "format=rgba&encoding=webp", photo[0]).content)
    assert webp.mode == "RGBA" and np.array_equal(np.asarray(webp), png)


def test_overlay_as_jpeg(demo_client, photo) -> None:
    png = np.asarray(decode(post(demo_client, "format=overlay", photo[0]).content), np.float32)
    response = post(demo_client, "format=overlay&encoding=jpeg", photo[0])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    jpeg = decode(response.content)
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB" and jpeg.size == (640, 480)
    # Lossy (and the test image is pure noise, JPEG's worst case), but the same picture.
    import cv2

    low_j = cv2.blur(np.asarray(jpeg, np.float32), (15, 15))
    low_p = cv2.blur(png, (15, 15))
    assert np.abs(low_j - low_p).mean() < 4


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("format=rgba&encoding=jpeg", "encoding=jpeg is not available for format=rgba (JPEG is "
         "lossy and has no alpha, so it is offered for overlays only); use one of: png, webp"),
        ("format=json&encoding=webp", "encoding=webp is not available for format=json (the JSON "
         "body embeds a PNG); use one of: png"),
        ("format=webp&encoding=png", "encoding=png is not available for format=webp (format=webp "
         "is the mask as WebP); use one of: webp"),
    ],
)
def test_encodings_a_format_cannot_take_are_refused(demo_client, photo, query, message):
    response = post(demo_client, query, photo[0])
    assert response.status_code == 422
    assert response.json() == {"error": {"code": "validation_error", "message": message}}


def test_openapi_documents_the_new_parameters(demo_client) -> None:
    spec = demo_client.get("/openapi.json").json()
    operation = spec["paths"]["/segment"]["post"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert {"refine", "zoom", "decontaminate", "encoding"} <= set(params)
    assert "webp" in str(params["format"]["schema"])
    assert "jpeg" in str(params["encoding"]["schema"])
    content = operation["responses"]["200"]["content"]
    assert {"image/png", "image/webp", "image/jpeg"} <= set(content)
    assert "format=overlay&encoding=jpeg" in operation["responses"]["200"]["description"]
