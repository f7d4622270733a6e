"""Decoding untrusted images: every mode becomes RGB, and a corpus of broken or odd files
never causes an undesigned 5xx nor hurts the process."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_testing import decode_png, image_bytes

from service.imaging import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    mask_stats,
    mask_to_uint8,
)

LIMIT = 40_000_000


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png16_gray() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)
    return cv2.imencode(".png", ramp)[1].tobytes()


def _png16_rgb() -> bytes:
    arr = (np.random.default_rng(1).random((40, 50, 3)) * 65535).astype(np.uint16)
    return cv2.imencode(".png", arr)[1].tobytes()


def _exif_jpeg(orientation: int, h: int = 60, w: int = 100) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(_rgb(h, w)), "JPEG", exif=exif.tobytes())


def _animated(fmt: str) -> bytes:
    frames = [Image.fromarray(_rgb(40, 30, seed=i)) for i in range(3)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _multipage_tiff() -> bytes:
    frames = [Image.fromarray(_rgb(30, 20, seed=i)) for i in range(2)]
    return _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def _palette_with_transparency() -> bytes:
    img = Image.fromarray(_rgb(32, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def _wrong_magic(data: bytes) -> bytes:
    return b"\x00\x00\x00\x00" + data[4:]


# (name, payload, content type, expected status, expected mask size (w, h) for 200)
VALID = [
    ("16-bit grayscale PNG", _png16_gray(), "image/png", (64, 48)),
    ("16-bit RGB PNG", _png16_rgb(), "image/png", (50, 40)),
    ("palette PNG", image_bytes(40, 50, mode="P"), "image/png", (50, 40)),
    ("palette PNG with transparency", _palette_with_transparency(), "image/png", (48, 32)),
    ("grayscale PNG", image_bytes(40, 50, mode="L"), "image/png", (50, 40)),
    ("grayscale + alpha PNG", image_bytes(40, 50, mode="LA"), "image/png", (50, 40)),
    ("1-bit PNG", image_bytes(40, 50, mode="1"), "image/png", (50, 40)),
    ("RGBA PNG", image_bytes(40, 50, mode="RGBA"), "image/png", (50, 40)),
    ("CMYK JPEG", image_bytes(40, 50, fmt="JPEG", mode="CMYK"), "image/jpeg", (50, 40)),
    ("EXIF orientation 6 JPEG", _exif_jpeg(6), "image/jpeg", (60, 100)),
    ("EXIF orientation 8 JPEG", _exif_jpeg(8), "image/jpeg", (60, 100)),
    ("EXIF orientation 3 JPEG", _exif_jpeg(3), "image/jpeg", (100, 60)),
    ("1x1 PNG", image_bytes(1, 1), "image/png", (1, 1)),
    ("20000x1 PNG", image_bytes(1, 20000), "image/png", (20000, 1)),
    ("1x20000 PNG", image_bytes(20000, 1), "image/png", (1, 20000)),
    ("animated GIF", _animated("GIF"), "image/gif", (30, 40)),
    ("animated WebP", _animated("WEBP"), "image/webp", (30, 40)),
    ("lossless WebP", image_bytes(40, 50, fmt="WEBP", lossless=True), "image/webp", (50, 40)),
    ("BMP", image_bytes(40, 50, fmt="BMP"), "image/bmp", (50, 40)),
    ("TIFF", image_bytes(40, 50, fmt="TIFF"), "image/tiff", (50, 40)),
    ("multi-page TIFF", _multipage_tiff(), "image/tiff", (20, 30)),
    (
        "float TIFF",
        _save(Image.fromarray(np.ones((20, 30), np.float32) * 0.5), "TIFF"),
        "image/tiff",
        (30, 20),
    ),  # fmt: skip
    ("PNG sent as JPEG", image_bytes(40, 50), "image/jpeg", (50, 40)),
    ("PNG as octet-stream", image_bytes(40, 50), "application/octet-stream", (50, 40)),
]

_png = image_bytes(40, 50)
_jpeg = image_bytes(40, 50, fmt="JPEG")
BROKEN = [
    ("zero bytes", b"", "image/png", 400),
    ("truncated PNG", _png[: len(_png) // 2], "image/png", 400),
    ("truncated JPEG", _jpeg[: len(_jpeg) // 2], "image/jpeg", 400),
    ("PNG header only", _png[:33], "image/png", 400),
    ("wrong magic bytes", _wrong_magic(_png), "image/png", 400),
    ("JPEG magic then garbage", b"\xff\xd8\xff\xe0" + b"\x13" * 200, "image/jpeg", 400),
    ("random bytes", np.random.default_rng(3).bytes(5000), "image/png", 400),
    ("ICO (unsupported format)", _save(Image.fromarray(_rgb(16, 16)), "ICO"), "image/png", 400),
    ("PDF", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "application/octet-stream", 400),
    ("SVG", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415),
    ("HTML", b"<html></html>", "text/html", 415),
]


@pytest.mark.parametrize(("name", "data", "content_type", "size"), VALID, ids=[v[0] for v in VALID])
def test_odd_but_valid_images_are_segmented(client: TestClient, name, data, content_type, size):
    response = client.post("/segment/cod", content=data, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    mask = decode_png(response.content)
    assert (mask.mode, mask.size) == ("L", size)


@pytest.mark.parametrize(
    ("name", "data", "content_type", "status"), BROKEN, ids=[b[0] for b in BROKEN]
)
def test_broken_images_get_designed_4xx(client: TestClient, name, data, content_type, status):
    response = client.post("/segment/cod", content=data, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    expected_code = "invalid_image" if status == 400 else "unsupported_media_type"
    assert body["error"]["code"] == expected_code


def test_process_stays_healthy_after_the_corpus(client: TestClient) -> None:
    for _, data, content_type, _ in BROKEN:
        client.post("/segment/sod", content=data, headers={"content-type": content_type})
    assert client.get("/health/ready").status_code == 200
    response = client.post(
        "/segment/sod", content=image_bytes(60, 80), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200
    metrics = client.get("/metrics").text
    assert 'code="500"' not in metrics


# -------------------------------------------------------------------- decode_image itself


def test_decode_scales_16_bit_to_8_bit() -> None:
    rgb = decode_image(_png16_gray(), LIMIT).rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])


def test_decode_expands_palette_like_pillow_convert() -> None:
    data = image_bytes(40, 50, mode="P")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_image(data, LIMIT).rgb, expected)


def test_decode_drops_alpha() -> None:
    rgba = np.dstack([_rgb(20, 30), np.zeros((20, 30), np.uint8)])
    decoded = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT)
    assert np.array_equal(decoded.rgb, rgba[:, :, :3])


def test_decode_applies_exif_rotation_to_pixels() -> None:
    pixels = _rgb(60, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed = stored rotated 90 degrees clockwise
    data = _save(Image.fromarray(pixels), "PNG", exif=exif.tobytes())
    decoded = decode_image(data, LIMIT).rgb
    assert np.array_equal(decoded, np.rot90(pixels, k=-1))


def test_decode_rejects_over_limit_from_header() -> None:
    with pytest.raises(ImageTooLargeError, match="image is 50x40 = 2000 pixels; the limit is 1999"):
        decode_image(image_bytes(40, 50), 1999)


def test_decode_rejects_empty() -> None:
    with pytest.raises(ImageDecodeError, match="empty image payload"):
        decode_image(b"", LIMIT)


def test_mask_encodings_and_statistics() -> None:
    soft = np.zeros((4, 6), np.float32)
    soft[1:3, 2:5] = 0.9
    soft[0, 0] = 0.4
    assert mask_to_uint8(soft)[1, 2] == 230 and mask_to_uint8(soft)[0, 0] == 102
    binary = mask_to_uint8(soft, threshold=0.5)
    assert set(np.unique(binary).tolist()) == {0, 255}
    stats = mask_stats(soft, soft > 0.5)
    assert stats.bbox == (2, 1, 3, 2)
    assert stats.foreground_fraction == pytest.approx(6 / 24)
    expected_confidence = (6 * 0.9 + 0.6 + 17 * 1.0) / 24
    assert stats.mean_confidence == pytest.approx(expected_confidence, abs=1e-6)
    assert mask_stats(soft, soft > 0.95).bbox is None
