"""Admission at the door: refuse overload before paying for it (DESIGN "The service at run time").

A /segment request takes a ``Permit`` before its body is read:

* a per-task in-flight slot (``FOCUS_MAX_INFLIGHT_PER_TASK``), held until the response is
  built, so one flooded task cannot hold every body, decode and queue slot;
* a share of a global budget of decoded pixels (``FOCUS_MAX_INFLIGHT_PIXELS``), reserved as
  soon as the image header has arrived (``HeaderSniffer``: a few hundred bytes of the upload,
  raw or inside a multipart part), before the rest of the body is read or anything decoded.

Both are non-blocking: a request that does not fit is answered 503 ``overloaded`` with
``Retry-After`` at once, instead of waiting for a CPU slot with a decoded 40 MP image in memory.
The pixel budget is what bounds memory: decoding, resizing and the mask at the original size
all scale with the image's pixels, so the peak is about ``budget x bytes-per-pixel`` above the
idle process (``benchmarks/RESULTS.md`` states the measured bound).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from types import TracebackType

from PIL import Image

from models.imaging import DECODE_FORMATS
from service.errors import ErrorCode, ServiceError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

# Header parse attempts at these prefix sizes, then once more on the whole body: PNG, GIF, BMP
# and WebP say their size in the first 30 bytes; a JPEG's SOF can follow an EXIF block of tens
# of kilobytes; TIFF directories can sit anywhere.
SNIFF_AT: tuple[int, ...] = (64, 1024, 16 * 1024, 128 * 1024, 1024 * 1024)


def _webp_size(prefix: bytes) -> tuple[int, int] | None:
    """A WebP's canvas size from its first 30 bytes (Pillow's WebP reader needs the whole file).

    RIFF container, then the first chunk: ``VP8X`` (extended: 24-bit width-1, height-1),
    ``VP8L`` (lossless: 14-bit width-1, height-1 after a signature byte) or ``VP8 `` (lossy:
    14-bit width and height after the key-frame start code).
    """
    if len(prefix) < 30 or prefix[:4] != b"RIFF" or prefix[8:12] != b"WEBP":
        return None
    chunk = prefix[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(prefix[24:27], "little")
        height = 1 + int.from_bytes(prefix[27:30], "little")
        return width, height
    if chunk == b"VP8L" and prefix[20] == 0x2F:
        bits = int.from_bytes(prefix[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and prefix[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(prefix[26:28], "little") & 0x3FFF
        height = int.from_bytes(prefix[28:30], "little") & 0x3FFF
        return width, height
    return None


def header_size(prefix: bytes) -> tuple[int, int] | None:
    """(width, height) from an image header (a prefix of the file), or None if not there yet.

    Raises Pillow's ``DecompressionBombError`` for a header announcing over twice
    ``Image.MAX_IMAGE_PIXELS``, as decoding would.
    """
    webp = _webp_size(prefix)
    if webp is not None:
        return webp if webp[0] > 0 and webp[1] > 0 else None
    Image.init()
    formats = [f for f in DECODE_FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(prefix), formats=formats) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise
    except Exception:  # truncated header, not an image (yet): decoding will say which
        return None
    if width <= 0 or height <= 0:
        return None
    return int(width), int(height)


def header_pixels(prefix: bytes) -> int | None:
    """Width x height from an image header prefix, or None (see ``header_size``)."""
    size = header_size(prefix)
    return None if size is None else size[0] * size[1]


class Admission:
    """The in-flight slots per task and the global pixel budget of one app."""

    def __init__(
        self, *, max_inflight_per_task: int, max_inflight_pixels: int, metrics: Metrics
    ) -> None:
        self.max_inflight_per_task = max_inflight_per_task
        self.max_inflight_pixels = max_inflight_pixels
        self.metrics = metrics
        self.inflight: dict[str, int] = {}
        self.pixels = 0
        self.accepting = True
        metrics.inflight_pixels.set(0)

    def admit(self, task: str) -> Permit:
        """A permit for one request of ``task``, or 503 (``overloaded`` / ``shutting_down``)."""
        if not self.accepting:
            raise ServiceError(ErrorCode.SHUTTING_DOWN, "the service is shutting down")
        held = self.inflight.get(task, 0)
        if held >= self.max_inflight_per_task:
            self.metrics.dropped.labels(task=task, reason="overloaded").inc()
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"{held} {task} requests are in flight (the limit is "
                f"{self.max_inflight_per_task}); retry later",
            )
        self.inflight[task] = held + 1
        return Permit(self, task)

    def _reserve(self, task: str, pixels: int) -> None:
        if self.pixels > 0 and self.pixels + pixels > self.max_inflight_pixels:
            self.metrics.dropped.labels(task=task, reason="overloaded").inc()
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"the server is busy with {self.pixels} pixels of images (the budget is "
                f"{self.max_inflight_pixels}); this {pixels}-pixel image does not fit; retry later",
            )
        self.pixels += pixels
        self.metrics.inflight_pixels.set(self.pixels)

    def _release(self, task: str, pixels: int) -> None:
        self.inflight[task] -= 1
        self.pixels -= pixels
        self.metrics.inflight_pixels.set(self.pixels)


@dataclass(eq=False)
class Permit:
    """One admitted request's slot and pixel reservation; a context manager releasing both."""

    admission: Admission
    task: str
    pixels: int = 0
    released: bool = field(default=False, init=False)

    def reserve(self, width: int, height: int, max_pixels: int) -> None:
        """Reserve the image's decoded pixels (once); 413 above ``max_pixels``, 503 if full."""
        if self.pixels or self.released:
            return
        pixels = width * height
        if pixels > max_pixels:  # the decoder's own message, before anything is decoded
            raise ServiceError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"image is {width}x{height} = {pixels} pixels; the limit is {max_pixels}",
            )
        self.admission._reserve(self.task, pixels)
        self.pixels = pixels

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self.task, self.pixels)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class HeaderSniffer:
    """Reads the image size from the first bytes of an upload and reserves it in the permit."""

    def __init__(self, permit: Permit, max_pixels: int) -> None:
        self.permit = permit
        self.max_pixels = max_pixels
        self._buffer = bytearray()
        self._attempts = list(SNIFF_AT)
        self.pixels: int | None = None

    def feed(self, chunk: bytes) -> None:
        """Called with each piece of the image payload as it arrives (may raise 413 / 503)."""
        if self.pixels is not None or not self._attempts:
            return
        self._buffer += chunk
        while self._attempts and len(self._buffer) >= self._attempts[0]:
            self._attempts.pop(0)
            if self._try(bytes(self._buffer)):
                return
        if not self._attempts:
            self._buffer = bytearray()  # give up on prefixes; finish() sees the whole image

    def finish(self, data: bytes) -> None:
        """The whole payload has arrived: a last attempt when the prefixes did not do."""
        if self.pixels is None:
            self._try(data)
        self._buffer = bytearray()

    def _try(self, prefix: bytes) -> bool:
        try:
            size = header_size(prefix)
        except Image.DecompressionBombError:
            raise ServiceError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"image is larger than the pixel limit of {self.max_pixels} "
                "(decompression bomb guard)",
            ) from None
        if size is None:
            return False
        self.pixels = size[0] * size[1]
        self._buffer = bytearray()
        self.permit.reserve(size[0], size[1], self.max_pixels)
        return True
