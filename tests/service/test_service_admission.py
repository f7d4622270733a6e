"""Admission at the door, deadlines before every CPU stage, client aborts (issue 11, items 1-2).

Requests are driven through the app's raw ASGI interface where the test must see *how much of
the body* the service read before answering; the model is the real tiny ONNX model.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from PIL import Image
from service_testing import (
    GatedBackend,
    asgi_scope,
    factory,
    image_bytes,
    metric_value,
    run,
    running,
    until,
)

from service.admission import header_pixels
from service.app import create_app

PNG = {"content-type": "image/png"}
CHUNK = 64


class Upload:
    """A client sending ``body`` in small chunks; records how many the server pulled."""

    def __init__(
        self, body: bytes, *, disconnect_after: int | None = None, pause: float = 0.0
    ) -> None:
        self.chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        self.pulled = 0
        self.disconnect_after = disconnect_after
        self.pause = pause
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.disconnect_after is not None and self.pulled >= self.disconnect_after:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}
        if self.pulled >= len(self.chunks):
            await asyncio.sleep(3600)  # after the body only a disconnect could come
        chunk = self.chunks[self.pulled]
        self.pulled += 1
        more = self.pulled < len(self.chunks)
        if not more and self.pause:
            await asyncio.sleep(self.pause)  # the last piece arrives late
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    def json(self) -> Any:
        import json

        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))

    def header(self, name: bytes) -> bytes | None:
        return dict(self.sent[0]["headers"]).get(name)


def _multipart(data: bytes, boundary: str = "focusboundary") -> tuple[bytes, str]:
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _metric(text: str, name: str, **labels: str) -> float:
    return metric_value(text, name, **labels)


# ---------------------------------------------------------------------- header sniffing


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_header_pixels_reads_the_size_from_a_prefix(fmt: str) -> None:
    data = image_bytes(300, 500, fmt=fmt)
    assert header_pixels(data) == 150_000
    sizes = [n for n in (64, 1024, 16384) if header_pixels(data[:n]) == 150_000]
    assert sizes, f"{fmt}: no prefix up to 16 KiB gave the size"
    assert header_pixels(b"not an image at all") is None
    assert header_pixels(data[:8]) is None


def test_header_pixels_after_a_large_exif_block() -> None:
    img = Image.new("RGB", (640, 480), (10, 20, 30))
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription: a 30 kB APP1 before the SOF marker
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    assert header_pixels(data[:1024]) is None
    assert header_pixels(data[: 128 * 1024]) == 640 * 480


# ------------------------------------------------------------------------- admission


def _gated_app(make_settings, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    made: dict[str, Any] = {}
    settings = make_settings(max_batch_size=1, max_delay_ms=0, **overrides)
    return create_app(settings, backend_factory=factory(GatedBackend, made)), made


def test_per_task_limit_refuses_before_reading_the_body(
    make_settings, model_repository, png_320x240
) -> None:
    app, made = _gated_app(
        make_settings, model_repository=model_repository, max_inflight_per_task=1
    )

    async def scenario():
        async with running(app) as client:
            made["camouflage"].hold.clear()
            first = asyncio.create_task(
                client.post("/segment/cod", content=png_320x240, headers=PNG)
            )
            await until(lambda: len(made["camouflage"].batches) == 2)
            upload = Upload(png_320x240)
            await app(asgi_scope("/segment/cod", "image/png"), upload.receive, upload.send)
            other = asyncio.create_task(  # admitted: another task has its own slots
                client.post("/segment/salient", content=png_320x240, headers=PNG)
            )
            await until(lambda: app.state.focus.admission.inflight.get("salient") == 1)
            made["camouflage"].hold.set()  # (one executor: salient computes after camouflage)
            first, other_task = await asyncio.gather(first, other)
            return upload, first, other_task, (await client.get("/metrics")).text

    upload, first, other_task, metrics = run(scenario())
    assert upload.status == 503
    assert upload.pulled == 0  # not one byte of the body was read
    assert upload.header(b"retry-after") == b"1"
    assert upload.json() == {
        "error": {
            "code": "overloaded",
            "message": "1 camouflage requests are in flight (the limit is 1); retry later",
        }
    }
    assert first.status_code == 200
    assert other_task.status_code == 200  # another task has its own in-flight slots
    assert _metric(metrics, "focus_dropped_requests_total", task="camouflage",
                   reason="overloaded") == 1  # fmt: skip
    assert _metric(metrics, "focus_requests_total", task="camouflage", code="503") == 1
    assert _metric(metrics, "focus_inflight_pixels") == 0  # everything released


@pytest.mark.parametrize("multipart", [False, True])
def test_pixel_budget_refuses_from_the_header(make_settings, multipart: bool) -> None:
    small = image_bytes(240, 320, seed=1)  # 76,800 pixels
    big = image_bytes(300, 400, seed=2)  # 120,000 pixels: does not fit next to the small one
    app, made = _gated_app(make_settings, max_pixels=150_000, max_inflight_pixels=150_000)

    async def scenario():
        async with running(app) as client:
            made["camouflage"].hold.clear()
            first = asyncio.create_task(client.post("/segment/cod", content=small, headers=PNG))
            await until(lambda: len(made["camouflage"].batches) == 2)
            inflight = _metric((await client.get("/metrics")).text, "focus_inflight_pixels")
            body, kind = _multipart(big) if multipart else (big, "image/png")
            upload = Upload(body)
            await app(asgi_scope("/segment/cod", kind, len(body)), upload.receive, upload.send)
            made["camouflage"].hold.set()
            first = await first
            alone = await client.post("/segment/cod", content=big, headers=PNG)
            return inflight, upload, len(upload.chunks), first, alone

    inflight, upload, chunks, first, alone = run(scenario())
    assert inflight == 76_800
    assert upload.status == 503
    assert upload.json() == {
        "error": {
            "code": "overloaded",
            "message": "the server is busy with 76800 pixels of images (the budget is 150000); "
            "this 120000-pixel image does not fit; retry later",
        }
    }
    assert upload.pulled <= 4 < chunks  # refused at the header, not after the whole body
    assert first.status_code == 200 and alone.status_code == 200  # alone, it fits


def test_image_over_max_pixels_is_refused_from_its_header(make_settings) -> None:
    app = create_app(make_settings(max_pixels=50_000))
    data = image_bytes(240, 320)

    async def scenario():
        async with running(app):
            upload = Upload(data)
            await app(asgi_scope("/segment/cod", "image/png"), upload.receive, upload.send)
            return upload

    upload = run(scenario())
    assert upload.status == 413
    assert upload.json() == {
        "error": {
            "code": "image_too_large",
            "message": "image is 320x240 = 76800 pixels; the limit is 50000",
        }
    }
    assert upload.pulled < len(upload.chunks)


# -------------------------------------------------------------- deadline, client aborts


def test_deadline_is_checked_before_decoding(make_settings, monkeypatch, png_320x240) -> None:
    import service.pipeline as segment_route  # segment_bytes, which the route runs

    decoded: list[int] = []
    real_prepare = segment_route.prepare

    def prepare(*args: Any, **kwargs: Any) -> Any:
        decoded.append(1)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(segment_route, "prepare", prepare)
    app = create_app(make_settings(timeout_s=0.5))

    async def scenario():
        async with running(app) as client:
            upload = Upload(png_320x240, pause=0.8)  # the body completes after the deadline
            await app(asgi_scope("/segment/cod", "image/png"), upload.receive, upload.send)
            return upload, (await client.get("/metrics")).text

    upload, metrics = run(scenario())
    assert upload.status == 504
    assert upload.json() == {
        "error": {
            "code": "timeout",
            "message": "no result within 0.5s (deadline passed before decoding)",
        }
    }
    assert decoded == []  # no CPU spent on a request that is already lost
    assert _metric(metrics, "focus_dropped_requests_total", task="camouflage",
                   reason="deadline") == 1  # fmt: skip


@pytest.mark.parametrize("multipart", [False, True])
def test_client_gone_mid_upload_is_not_a_server_error(
    make_settings, png_320x240, multipart: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings())
    body, kind = _multipart(png_320x240) if multipart else (png_320x240, "image/png")

    async def scenario():
        async with running(app) as client:
            before = (await client.get("/metrics")).text
            uploads = [Upload(body, disconnect_after=3) for _ in range(3)]
            for upload in uploads:
                await app(asgi_scope("/segment/cod", kind), upload.receive, upload.send)
            return before, uploads, (await client.get("/metrics")).text

    with caplog.at_level("INFO"):
        before, uploads, after = run(scenario())
    assert [u.status for u in uploads] == [499] * 3
    for name, labels, delta in (
        ("focus_dropped_requests_total", {"task": "camouflage", "reason": "client_gone"}, 3),
        ("focus_requests_total", {"task": "camouflage", "code": "499"}, 3),
        ("focus_requests_total", {"task": "camouflage", "code": "500"}, 0),
        ("focus_inflight_pixels", {}, 0),
    ):
        assert _metric(after, name, **labels) - _metric(before, name, **labels) == delta, name
    gone = [r for r in caplog.records if "went away during the upload" in r.getMessage()]
    assert len(gone) == 3 and {r.levelname for r in gone} == {"INFO"}
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
