"""Every endpoint, format, alias and request-level error of the HTTP API (real tiny model)."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import subprocess
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_testing import decode_png, image_bytes, run, running

from service.app import create_app
from service.imaging import OVERLAY_ALPHA, OVERLAY_COLOUR

AVAILABLE = "camouflage, salient, shadow"
PNG = {"content-type": "image/png"}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height, with a tiny (invalid) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# ------------------------------------------------------------------------------ health etc.


def test_health_live_returns_alive(client: TestClient) -> None:
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_health_ready_lists_served_tasks(client: TestClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "tasks": ["camouflage", "salient", "shadow"]}


def test_health_ready_is_503_before_the_lifespan_ran(make_settings) -> None:
    app = create_app(make_settings())
    response = TestClient(app).get("/health/ready")  # no `with`: no lifespan, no models
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == _error("not_ready", "models are not loaded yet")


def test_tasks_lists_models_with_metadata(client: TestClient) -> None:
    response = client.get("/tasks")
    assert response.status_code == 200
    expected = []
    for name, alias, description in (
        ("camouflage", "cod", "camouflaged object detection"),
        ("salient", "sod", "salient object detection"),
        ("shadow", "sd", "shadow detection"),
    ):
        expected.append(
            {
                "name": name,
                "aliases": [alias],
                "description": description,
                "model": {
                    "task": name,
                    "preset": "tiny",
                    "version": "test",
                    "backend": "onnxruntime",
                    "device": "cpu",
                    "repository_version": 1,
                    "precision": "fp32",
                    "gate": "fp32 reference (no gate needed)",
                },
                "input": {"short_side": 256, "max_size": 1024, "size_divisibility": 32},
                "max_batch_size": 8,
            }
        )
    body = response.json()
    for task in body["tasks"]:  # no precision variants in this repository: nothing to time
        assert task["model"].pop("selection").startswith(
            "auto: onnxruntime-fp32 (the only candidate); onnxruntime-int8: not built"
        )
    assert body == {"tasks": expected}


def test_metrics_exposes_every_focus_metric(make_settings, png_320x240: bytes) -> None:
    with TestClient(create_app(make_settings())) as client:  # a fresh app: exact counts
        response = client.post("/segment/cod", content=png_320x240, headers=PNG)
        assert response.status_code == 200
        text = client.get("/metrics").text
    for name in (
        "focus_requests_total",
        "focus_request_duration_seconds",
        "focus_queue_duration_seconds",
        "focus_compute_duration_seconds",
        "focus_batch_size",
        "focus_queue_depth",
        "focus_inflight_requests",
        "focus_model_info",
        "focus_preprocess_duration_seconds",
        "focus_postprocess_duration_seconds",
        "focus_dropped_requests_total",
    ):
        assert f"# TYPE {name} " in text, name
    assert 'focus_requests_total{code="200",task="camouflage"} 1.0' in text.splitlines()
    assert (
        'focus_model_info{backend="onnxruntime",precision="fp32",preset="tiny",repository_version="1",'
        'task="camouflage",version="test"} 1.0' in text
    )
    assert 'focus_batch_size_bucket{le="1.0",task="camouflage"} 1.0' in text.splitlines()
    assert 'focus_batch_size_count{task="camouflage"} 1.0' in text.splitlines()


def test_metrics_output_passes_promtool(client: TestClient, png_320x240: bytes) -> None:
    """The exposition is read by a parser other than the library that wrote it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is absent (Debian package `prometheus`; `make test` installs it)")
    assert client.post("/segment/cod", content=png_320x240, headers=PNG).status_code == 200
    text = client.get("/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = text.replace("focus_requests_total{", "focus_requests_total{code=", 1)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=broken, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0  # promtool does fail on a malformed exposition


def test_demo_page_and_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text  # no CDN


def test_openapi_documents_every_route_and_error(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/segment",
        "/segment/{task}",
        "/tasks",
        "/health/live",
        "/health/ready",
        "/health/ready/{task}",
        "/metrics",
        "/admin/reload",
    }
    reload = schema["paths"]["/admin/reload"]["post"]
    assert set(reload["responses"]) == {"200", "401", "403", "404", "422", "503"}
    post = schema["paths"]["/segment/{task}"]["post"]
    assert set(post["responses"]) >= {"200", "400", "401", "404", "413", "415", "422", "500"}
    assert {"503", "504"} <= set(post["responses"])
    content = post["requestBody"]["content"]
    assert "multipart/form-data" in content and "image/png" in content
    example = post["responses"]["404"]["content"]["application/json"]["example"]
    assert example["error"]["code"] == "unknown_task"
    assert "SegmentResult" in schema["components"]["schemas"]


# ---------------------------------------------------------------------------- segmentation


def test_segment_png_is_grayscale_mask_at_original_size(client: TestClient, png_320x240: bytes):
    response = client.post(
        "/segment/camouflage", files={"image": ("a.png", png_320x240, "image/png")}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-focus-task"] == "camouflage"
    assert response.headers["x-focus-backend"] == "onnxruntime"
    assert response.headers["x-focus-model-version"] == "1"  # the flat layout
    assert response.headers["server-timing"].startswith("preprocess;dur=")
    mask = decode_png(response.content)
    assert (mask.mode, mask.size) == ("L", (320, 240))


def test_segment_raw_body_equals_multipart(client: TestClient, png_320x240: bytes) -> None:
    multipart = client.post("/segment/salient", files={"image": ("x.png", png_320x240)})
    raw = client.post(
        "/segment/salient", content=png_320x240, headers={"content-type": "image/png"}
    )
    assert multipart.status_code == raw.status_code == 200
    assert multipart.content == raw.content


@pytest.mark.parametrize(
    "url",
    [
        "/segment/cod",
        "/segment/COD",
        "/segment?task=camouflage",
        "/segment?task=cod",
        "/segment/camouflage",
    ],
)
def test_segment_accepts_task_names_and_aliases(client: TestClient, png_320x240: bytes, url):
    reference = client.post(
        "/segment/camouflage", content=png_320x240, headers={"content-type": "image/png"}
    )
    response = client.post(url, content=png_320x240, headers={"content-type": "image/png"})
    assert response.status_code == 200
    assert response.content == reference.content


def test_segment_threshold_gives_binary_mask(client: TestClient, png_320x240: bytes) -> None:
    headers = {"content-type": "image/png"}
    soft = np.asarray(
        decode_png(client.post("/segment/cod", content=png_320x240, headers=headers).content)
    )
    response = client.post("/segment/cod?threshold=0.3", content=png_320x240, headers=headers)
    assert response.status_code == 200
    binary = np.asarray(decode_png(response.content))
    assert binary.shape == (240, 320)
    assert set(np.unique(binary).tolist()) <= {0, 255}
    # the soft mask is round(p * 255): p > 0.3 <=> soft >= 77 except within one grey level
    agree = (binary == 255) == (soft.astype(int) >= 77)
    assert agree.mean() > 0.99


def test_segment_json_has_mask_and_statistics(client: TestClient, png_320x240: bytes) -> None:
    headers = {"content-type": "image/png"}
    png = client.post("/segment/cod", content=png_320x240, headers=headers).content
    response = client.post("/segment/cod?format=json", content=png_320x240, headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "task", "width", "height", "mask_png_base64", "threshold", "foreground_fraction",
        "bbox", "mean_confidence", "model", "timing", "network", "refinement",
    }  # fmt: skip
    # the tiny preset upsamples to its short side of 256
    assert body["network"] == {"width": 341, "height": 256, "scale": 1.065625}
    assert body["refinement"] == {"refine": "none", "zoom": None}
    assert (body["task"], body["width"], body["height"], body["threshold"]) == (
        "camouflage", 320, 240, None,
    )  # fmt: skip
    assert base64.b64decode(body["mask_png_base64"]) == png  # the same mask as format=png
    assert body["model"] == {
        "task": "camouflage", "preset": "tiny", "version": "test",
        "backend": "onnxruntime", "device": "cpu", "repository_version": 1, "precision": "fp32",
        "gate": "", "selection": "",
    }  # fmt: skip
    assert 0.0 <= body["foreground_fraction"] <= 1.0
    assert 0.5 <= body["mean_confidence"] <= 1.0
    soft = np.asarray(decode_png(png)).astype(np.float64) / 255.0
    assert body["mean_confidence"] == pytest.approx(np.maximum(soft, 1 - soft).mean(), abs=3e-3)
    timing = body["timing"]
    assert set(timing) == {
        "preprocess_ms", "queue_ms", "compute_ms", "postprocess_ms", "total_ms", "batch_size",
    }  # fmt: skip
    assert timing["batch_size"] == 1 and timing["total_ms"] >= timing["compute_ms"] > 0


def test_segment_json_with_threshold_reports_its_binary_mask(client: TestClient, png_320x240):
    soft = np.asarray(decode_png(client.post("/segment/cod", content=png_320x240, headers=PNG)
                                 .content))
    levels = np.unique(soft)
    assert levels.size >= 2, "the soft mask is constant; no threshold splits it"
    # Halfway between two 8-bit levels, so `soft > threshold` is `soft_png > level` exactly:
    # a non-empty, non-full mask whatever the (barely trained) model predicts.
    level = int(levels[(levels.size - 1) // 2])
    threshold = (level + 0.5) / 255
    response = client.post(f"/segment/cod?format=json&threshold={threshold}",
                           content=png_320x240, headers=PNG)
    assert response.status_code == 200
    body = response.json()
    mask = np.asarray(decode_png(base64.b64decode(body["mask_png_base64"]))) == 255
    expected = soft > level
    assert body["threshold"] == pytest.approx(threshold)
    assert (mask != expected).mean() <= 1e-3  # rounding ties at the level boundary only
    assert body["foreground_fraction"] == pytest.approx(mask.mean())
    ys, xs = np.nonzero(mask)
    assert body["bbox"] == {
        "x": int(xs.min()), "y": int(ys.min()),
        "width": int(xs.max() - xs.min() + 1), "height": int(ys.max() - ys.min() + 1),
    }  # fmt: skip


def test_segment_rgba_is_cutout_with_mask_as_alpha(client: TestClient, png_320x240: bytes):
    headers = {"content-type": "image/png"}
    mask = np.asarray(
        decode_png(client.post("/segment/sd", content=png_320x240, headers=headers).content)
    )
    response = client.post("/segment/sd?format=rgba", content=png_320x240, headers=headers)
    assert response.status_code == 200
    cutout = decode_png(response.content)
    assert (cutout.mode, cutout.size) == ("RGBA", (320, 240))
    rgba = np.asarray(cutout)
    original = np.asarray(Image.open(io.BytesIO(png_320x240)).convert("RGB"))
    assert np.array_equal(rgba[:, :, 3], mask)
    assert np.array_equal(rgba[:, :, :3], original)


def test_segment_overlay_is_rgb_at_original_size(client: TestClient, png_320x240: bytes):
    response = client.post(
        "/segment/sod?format=overlay", content=png_320x240, headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    overlay = decode_png(response.content)
    assert (overlay.mode, overlay.size) == ("RGB", (320, 240))
    # The soft mask blended over the image in the overlay colour: recomputed from the mask.
    mask = np.asarray(
        decode_png(client.post("/segment/sod", content=png_320x240, headers=PNG).content)
    )
    original = np.asarray(Image.open(io.BytesIO(png_320x240)).convert("RGB")).astype(np.float32)
    weight = (mask.astype(np.float32) * OVERLAY_ALPHA / 255.0)[:, :, None]
    expected = original * (1 - weight) + np.asarray(OVERLAY_COLOUR, np.float32) * weight
    assert np.abs(np.asarray(overlay, np.float32) - expected).max() <= 1.0
    assert np.abs(expected - original).max() > 20  # an echoed input would not pass


def test_segment_applies_exif_orientation(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = image_bytes(120, 200, seed=4, fmt="JPEG", exif=exif.tobytes())
    response = client.post("/segment/cod", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200
    assert decode_png(response.content).size == (120, 200)  # displayed size: width 120


# --------------------------------------------------------------------------------- errors


def test_segment_unknown_task_returns_404(client: TestClient, png_320x240: bytes) -> None:
    response = client.post(
        "/segment/nope", content=png_320x240, headers={"content-type": "image/png"}
    )
    assert response.status_code == 404
    assert response.json() == _error("unknown_task", f"unknown task 'nope'; available: {AVAILABLE}")


def test_segment_task_without_model_returns_404(client: TestClient, png_320x240: bytes) -> None:
    response = client.post(
        "/segment?task=fd", content=png_320x240, headers={"content-type": "image/png"}
    )
    assert response.status_code == 404
    assert response.json() == _error(
        "unknown_task", f"no model for task 'forgery'; available: {AVAILABLE}"
    )


def test_unknown_route_returns_404(client: TestClient) -> None:
    response = client.get("/nothing/here")
    assert response.status_code == 404
    assert response.json() == _error("not_found", "no route /nothing/here")


def test_wrong_method_returns_405(client: TestClient) -> None:
    response = client.get("/segment/cod")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == _error("method_not_allowed", "method GET not allowed on /segment/cod")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image payload"),
        (b"\xff\xd8\xff\xe0garbage", "cannot read the image header: Truncated File Read"),
        (
            b"this is not an image at all",
            "cannot identify the image; supported formats: PNG, JPEG, WebP, BMP, TIFF, GIF",
        ),
    ],
)
def test_segment_undecodable_image_returns_400(client: TestClient, data: bytes, message: str):
    response = client.post("/segment/cod", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 400
    body = response.json()
    assert body == {"error": {"code": "invalid_image", "message": message}}


def test_segment_truncated_image_returns_400(client: TestClient, png_320x240: bytes) -> None:
    response = client.post(
        "/segment/cod", content=png_320x240[:400], headers={"content-type": "image/png"}
    )
    assert response.status_code == 400
    assert response.json() == _error(
        "invalid_image", "cannot decode the PNG image: image file is truncated"
    )


def test_segment_malformed_multipart_returns_400(client: TestClient) -> None:
    response = client.post(
        "/segment/cod",
        content=b"--xyz\r\nnot a part",
        headers={"content-type": "multipart/form-data"},  # no boundary
    )
    assert response.status_code == 400
    assert response.json() == _error(
        "malformed_body", "invalid multipart body: Missing boundary in multipart."
    )


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/svg+xml", None])
def test_segment_unsupported_media_type_returns_415(client: TestClient, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/segment/cod", content=b"<svg/>", headers=headers)
    assert response.status_code == 415
    shown = content_type or "none"
    assert response.json() == _error(
        "unsupported_media_type",
        f"unsupported content type {shown!r}; send multipart/form-data with a file field "
        "'image', or the raw image as image/png, image/jpeg, image/webp, image/bmp, image/tiff "
        "or image/gif",
    )


def test_segment_declared_body_over_limit_returns_413(make_settings, png_320x240: bytes):
    with TestClient(create_app(make_settings(max_body_bytes=1000))) as client:
        response = client.post(
            "/segment/cod", content=png_320x240, headers={"content-type": "image/png"}
        )
    assert response.status_code == 413
    assert response.json() == _error(
        "payload_too_large", "request body exceeds the limit of 1000 bytes"
    )


def test_segment_streamed_body_is_refused_while_reading(make_settings) -> None:
    """No Content-Length: the limit stops the upload early, the rest is never read."""
    limit, chunk = 256 * 1024, 64 * 1024
    sent = 0

    async def body():
        nonlocal sent
        for _ in range(1000):  # would be 64 MB
            sent += chunk
            yield b"\0" * chunk

    async def scenario():
        async with running(create_app(make_settings(max_body_bytes=limit))) as client:
            return await client.post(
                "/segment/cod", content=body(), headers={"content-type": "image/png"}
            )

    response = run(scenario())
    assert response.status_code == 413
    assert response.json() == _error(
        "payload_too_large", f"request body exceeds the limit of {limit} bytes"
    )
    assert sent <= limit + 2 * chunk


def test_segment_streamed_multipart_over_limit_returns_413(make_settings) -> None:
    async def scenario():
        async with running(create_app(make_settings(max_body_bytes=50_000))) as client:
            files = {"image": ("big.png", b"\0" * 200_000, "image/png")}
            request = client.build_request("POST", "/segment/cod", files=files)
            del request.headers["content-length"]
            request.headers["transfer-encoding"] = "chunked"
            return await client.send(request)

    response = run(scenario())
    assert response.status_code == 413
    assert response.json() == _error(
        "payload_too_large", "request body exceeds the limit of 50000 bytes"
    )


def test_segment_decompression_bomb_returns_413_from_the_header(client: TestClient) -> None:
    data = _png_header_only(50_000, 50_000)  # 2.5 gigapixels announced, ~100 bytes sent
    response = client.post("/segment/cod", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert response.json() == _error(
        "image_too_large",
        "image is larger than the pixel limit of 40000000 (decompression bomb guard)",
    )


def test_segment_over_pixel_limit_returns_413_before_decoding(make_settings) -> None:
    data = _png_header_only(8000, 6000)  # 48 Mpx announced: over the limit, under Pillow's
    with TestClient(create_app(make_settings(max_pixels=10_000))) as client:
        small = client.post(
            "/segment/cod", content=image_bytes(240, 320), headers={"content-type": "image/png"}
        )
        header_only = client.post(
            "/segment/cod", content=data, headers={"content-type": "image/png"}
        )
    assert small.status_code == header_only.status_code == 413
    assert small.json() == _error(
        "image_too_large", "image is 320x240 = 76800 pixels; the limit is 10000"
    )
    assert header_only.json() == _error(
        "image_too_large", "image is 8000x6000 = 48000000 pixels; the limit is 10000"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "/segment/cod?format=gif",
            "query.format: Input should be 'png', 'json', 'rgba', 'overlay' or 'webp'",
        ),
        ("/segment/cod?threshold=1.5", "query.threshold: Input should be less than or equal to 1"),
        (
            "/segment/cod?threshold=-0.1",
            "query.threshold: Input should be greater than or equal to 0",
        ),
        (
            "/segment/cod?threshold=half",
            "query.threshold: Input should be a valid number, unable to parse string as a number",
        ),
        ("/segment", "query.task: Field required"),
        ("/segment?task=", "query.task: String should have at least 1 character"),
    ],
)
def test_segment_bad_parameters_return_422(client: TestClient, png_320x240: bytes, url, message):
    response = client.post(url, content=png_320x240, headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert response.json() == _error("validation_error", message)


def test_segment_multipart_without_image_field_returns_422(client: TestClient, png_320x240):
    response = client.post("/segment/cod", files={"picture": ("a.png", png_320x240)})
    assert response.status_code == 422
    assert response.json() == _error("validation_error", "multipart body has no file field 'image'")


def test_segment_multipart_image_as_text_field_returns_422(client: TestClient) -> None:
    response = client.post("/segment/cod", files={"image": (None, b"not a file")})
    assert response.status_code == 422
    assert response.json() == _error(
        "validation_error", "multipart field 'image' must be a file (send it with a filename)"
    )


def test_api_key_is_required_when_configured(make_settings, png_320x240: bytes) -> None:
    headers = {"content-type": "image/png"}
    with TestClient(create_app(make_settings(api_key="s3cret"))) as client:
        missing = client.post("/segment/cod", content=png_320x240, headers=headers)
        wrong = client.post(
            "/segment/cod", content=png_320x240, headers={**headers, "x-api-key": "nope"}
        )
        tasks = client.get("/tasks")
        good = client.post(
            "/segment/cod", content=png_320x240, headers={**headers, "x-api-key": "s3cret"}
        )
        open_routes = [
            client.get(p).status_code for p in ("/health/live", "/health/ready", "/metrics", "/")
        ]
    expected = _error("unauthorized", "missing or invalid X-API-Key header")
    for response in (missing, wrong, tasks):
        assert response.status_code == 401
        assert response.json() == expected
    assert good.status_code == 200
    assert open_routes == [200, 200, 200, 200]


def test_request_counter_labels_unknown_tasks_as_unknown(client: TestClient) -> None:
    client.post(
        "/segment/definitely-not-a-task", content=b"x", headers={"content-type": "image/png"}
    )
    text = client.get("/metrics").text
    assert 'focus_requests_total{code="404",task="unknown"}' in text
    assert "definitely-not-a-task" not in text


def test_async_client_sees_same_mask_as_sync(make_settings, png_320x240: bytes) -> None:
    async def scenario():
        async with running(create_app(make_settings())) as client:
            return await client.post(
                "/segment/cod", content=png_320x240, headers={"content-type": "image/png"}
            )

    response = run(scenario())
    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert decode_png(response.content).size == (320, 240)
    with TestClient(create_app(make_settings())) as sync_client:
        sync = sync_client.post("/segment/cod", content=png_320x240, headers=PNG)
    assert sync.status_code == 200
    assert np.array_equal(np.asarray(decode_png(response.content)),
                          np.asarray(decode_png(sync.content)))
