"""Video and animated-image input for ``focus segment``: one mask per frame, through the same
backend, pre/post-processing, refinement and encodings as single images.

* Video files (``VIDEO_SUFFIXES``) are decoded with OpenCV (its bundled FFmpeg). Frames are
  batched through the backend (they share one padded shape), and written as
  - ``--format png`` (default): a grayscale mask video with the input's frame count, size and
    frame rate: ``<name>.mkv`` (FFV1, lossless, so frame k is exactly the mask of frame k) or,
    with ``--video-codec mp4v``, ``<name>.mp4`` (MPEG-4 Part 2: plays everywhere, lossy);
  - ``--format overlay``: the overlay as a colour video in the same container;
  - ``--format rgba``: a cut-out needs an alpha channel, which OpenCV's video writer cannot
    store (it writes 3-channel BGR or grey only), so the frames go to a PNG (or, with
    ``--encoding webp``, lossless WebP) sequence ``<name>/000000.png`` ...
* Animated GIF / WebP / APNG files with more than one frame give one output per frame in
  ``<name>/000000.<ext>`` ..., in any image format (json included).

An unreadable or unsupported file is a ``MediaError`` (the CLI prefixes the file's name).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageSequence

from models.imaging import ImageTooLargeError
from models.processing import preprocess_with_card
from service.backends.base import Backend
from service.imaging import mask_to_uint8, overlay
from service.pipeline import (
    Encoded,
    Inference,
    MaskResult,
    PreparedImage,
    SegmentOptions,
    encode,
    refine_on_backend,
)
from service.schemas import RefinementInfo

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg",
                                   ".mpeg", ".wmv")  # fmt: skip
ANIMATED_SUFFIXES: tuple[str, ...] = (".gif", ".webp", ".png")
VIDEO_CODECS: dict[str, tuple[str, str]] = {  # --video-codec -> (FourCC, container suffix)
    "ffv1": ("FFV1", ".mkv"),
    "mp4v": ("mp4v", ".mp4"),
}
VIDEO_FORMATS: tuple[str, ...] = ("png", "overlay", "rgba")


class MediaError(ValueError):
    """A video or animation that cannot be read or written (the CLI reports it and goes on)."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # as the container announces it (0: unknown)
    fps: float
    width: int
    height: int


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def animated_frame_count(path: Path) -> int:
    """Frames of a GIF / WebP / APNG file (1 for a still image or anything else)."""
    if path.suffix.lower() not in ANIMATED_SUFFIXES:
        return 1
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except Exception:  # not an image at all: the single-image path reports it
        return 1


# ----------------------------------------------------------------------------------- reading


def open_video(path: Path) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """(info, RGB uint8 frames) of a video file, or ``MediaError``."""
    if not path.is_file():
        raise MediaError("no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise MediaError(
            "cannot open the video (unreadable, or a container/codec this OpenCV "
            "build cannot decode)"
        )
    ok, first = capture.read()
    if not ok or first is None:
        capture.release()
        raise MediaError("no decodable frame (corrupt or unsupported video)")
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
    info = VideoInfo(
        frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        fps=fps if np.isfinite(fps) and fps > 0 else 25.0,
        width=int(first.shape[1]),
        height=int(first.shape[0]),
    )

    def frames() -> Iterator[np.ndarray]:
        try:
            frame: Any = first
            while frame is not None:
                yield np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                ok, frame = capture.read()
                if not ok:
                    frame = None
        finally:
            capture.release()

    return info, frames()


def animated_frames(path: Path, max_pixels: int) -> Iterator[np.ndarray]:
    """RGB uint8 frames of an animated image (Pillow composes GIF disposal and WebP blending)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
    except Exception as exc:
        raise MediaError(f"cannot read the animation ({exc})") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"frames are {width}x{height} = {width * height} pixels; "
                f"the limit is {max_pixels}"
            )
        try:
            for frame in ImageSequence.Iterator(img):
                yield np.ascontiguousarray(np.asarray(frame.convert("RGB"), np.uint8))
        except Exception as exc:
            raise MediaError(f"cannot decode a frame ({exc})") from None


# ---------------------------------------------------------------------------------- the chain


def prepare_frame(rgb: np.ndarray, backend: Backend) -> PreparedImage:
    return PreparedImage(rgb=rgb, inputs=preprocess_with_card(rgb, backend.card),
                         source_format="video")  # fmt: skip


def mask_frames(
    frames: Iterator[np.ndarray], backend: Backend, options: SegmentOptions, batch: int
) -> Iterator[tuple[PreparedImage, MaskResult, RefinementInfo]]:
    """Masks of ``frames`` in order, ``batch`` frames per backend call (a zoom pass, when it
    runs, is one more call for that frame); the rest is ``service.pipeline``'s chain."""
    pending: list[PreparedImage] = []

    def flush() -> Iterator[tuple[PreparedImage, MaskResult, RefinementInfo]]:
        if not pending:
            return
        probs, logits = backend.infer(
            np.stack([p.inputs.image for p in pending]), np.stack([p.inputs.edges for p in pending])
        )
        for k, image in enumerate(pending):
            inference = Inference(probs[k], logits[k], batch_size=len(pending))
            result, info = refine_on_backend(backend, image, inference, options)
            yield image, result, info
        pending.clear()

    for rgb in frames:
        image = prepare_frame(rgb, backend)
        if pending and image.shape_key != pending[0].shape_key:
            yield from flush()  # an animation's frames may change size; batches may not
        pending.append(image)
        if len(pending) >= batch:
            yield from flush()
    yield from flush()


# ----------------------------------------------------------------------------------- writing


class VideoWriter:
    """An OpenCV video writer that fails loudly: ``grey`` for masks, else BGR colour."""

    def __init__(self, path: Path, codec: str, info: VideoInfo, grey: bool) -> None:
        fourcc, _ = VIDEO_CODECS[codec]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.grey = grey
        self.size = (info.width, info.height)
        self.writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter.fourcc(*fourcc), info.fps, self.size, not grey
        )
        if not self.writer.isOpened():
            raise MediaError(f"{path}: OpenCV cannot write {codec} video here")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise MediaError(f"{self.path}: frame {self.frames} changed size")
        if not self.grey:
            frame = np.ascontiguousarray(frame[:, :, ::-1])  # RGB -> BGR
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()


def video_output(output: Path, relative: Path, fmt: str, codec: str) -> Path:
    """Where the result of video ``relative`` goes: a file, or a folder for frame sequences."""
    if fmt == "rgba":
        return output / relative.with_suffix("")
    return output / relative.with_suffix(VIDEO_CODECS[codec][1])


def segment_video(
    path: Path,
    target: Path,
    backend: Backend,
    options: SegmentOptions,
    *,
    batch: int,
    codec: str,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Segment every frame of video ``path`` into ``target`` (see ``video_output``); returns
    the number of frames written. ``progress(done, total)`` is called after each frame."""
    fmt, threshold = options.fmt, options.threshold
    if fmt not in VIDEO_FORMATS:
        raise MediaError(
            f"format {fmt} is per image; a video takes one of {', '.join(VIDEO_FORMATS)}"
        )
    info, frames = open_video(path)
    writer = None
    if fmt != "rgba":
        writer = VideoWriter(target, codec, info, grey=fmt == "png")
    done = 0
    try:
        for image, result, _ in mask_frames(frames, backend, options, batch):
            mask_u8 = mask_to_uint8(result.soft, threshold)
            if writer is not None:
                writer.write(mask_u8 if fmt == "png" else overlay(image.rgb, mask_u8))
            else:
                encoded = encode(fmt, image, result, threshold, encoding=options.encoding,
                                 decontaminate=options.decontaminate)  # fmt: skip
                _write_frame(target, done, encoded)
            done += 1
            if progress is not None:
                progress(done, info.frames)
    finally:
        if writer is not None:
            writer.close()
    return done


def _frame_suffix(encoded: Encoded) -> str:
    return {"image/png": ".png", "image/webp": ".webp", "image/jpeg": ".jpg",
            "application/json": ".json"}[encoded.media_type]  # fmt: skip


def _write_frame(folder: Path, index: int, encoded: Encoded, text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{index:06d}{_frame_suffix(encoded)}"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(encoded.content)
    return path


def segment_animation(
    path: Path,
    target: Path,
    backend: Backend,
    options: SegmentOptions,
    *,
    max_pixels: int,
    batch: int,
    render_json: Callable[[PreparedImage, Encoded, RefinementInfo], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """One output per frame of animated image ``path`` in folder ``target``; returns the count.
    ``render_json`` makes the text of a json frame (the CLI passes its ``json_result``)."""
    fmt, threshold = options.fmt, options.threshold
    total = animated_frame_count(path)
    done = 0
    frames = animated_frames(path, max_pixels)
    for image, result, info in mask_frames(frames, backend, options, batch):
        encoded = encode(fmt, image, result, threshold, encoding=options.encoding,
                         decontaminate=options.decontaminate)  # fmt: skip
        text = None
        if fmt == "json":
            if render_json is None:
                raise ValueError("json frames need render_json")
            text = render_json(image, encoded, info)
        _write_frame(target, done, encoded, text)
        done += 1
        if progress is not None:
            progress(done, total)
    return done


def frame_png(rgb: np.ndarray) -> bytes:
    """A frame as PNG bytes: what a user would send to ``/segment`` for that frame."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()
