"""``focus segment`` on videos and animated images, and its full-resolution options, with the
bundled demo models (``model_repository/``). Frame k of a mask video must equal the mask of
frame k segmented as a single image."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from service.cli import register

ROOT = Path(__file__).resolve().parents[2]
DEMO_REPOSITORY = ROOT / "model_repository"
FRAMES, FPS, SIZE = 9, 12.0, (160, 120)  # (width, height)

pytestmark = pytest.mark.skipif(
    not (DEMO_REPOSITORY / "salient" / "model.onnx").is_file(),
    reason="the bundled demo models are not in model_repository/",
)


def segment(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="focus")
    register(parser.add_subparsers(dest="command", required=True))
    # one named backend: the demo salient model has several gated precision variants, and
    # `auto` times them at every start, so two runs could pick different ones
    args = parser.parse_args([
        "segment", "--task", "salient", "--model-repository", str(DEMO_REPOSITORY),
        "--backend", "onnxruntime", *argv,
    ])  # fmt: skip
    return int(args.func(args))


def write_clip(path: Path) -> None:
    """A bright disc moving across dark noise (MPEG-4 Part 2, which every OpenCV writes)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for k in range(FRAMES):
        frame = rng.integers(0, 120, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
        cv2.circle(frame, (40 + 10 * k, 60), 28, (40, 200, 250), -1)
        writer.write(frame)
    writer.release()


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def single_image_masks(frames_rgb: list[np.ndarray], tmp: Path, *options: str) -> list[np.ndarray]:
    """Each frame saved as PNG and segmented by ``focus segment`` as a plain image."""
    folder = tmp / "single"
    folder.mkdir()
    for k, rgb in enumerate(frames_rgb):
        Image.fromarray(rgb).save(folder / f"{k:03d}.png")
    out = tmp / "single_out"
    assert segment("--input", str(folder), "--output", str(out), *options) == 0
    return [np.asarray(Image.open(out / f"{k:03d}.png")) for k in range(len(frames_rgb))]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_clip(path)
    return path


def test_mask_video_has_the_input_frames_size_and_rate_and_equals_single_images(
    clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert segment("--input", str(clip), "--output", str(out), "--batch", "4") == 0
    masks, fps = read_frames(out / "clip.mkv")  # FFV1: lossless
    assert len(masks) == FRAMES and fps == pytest.approx(FPS)
    assert all(m.shape[:2] == (SIZE[1], SIZE[0]) for m in masks)
    assert all(np.array_equal(m[..., 0], m[..., 1]) for m in masks)  # grey
    inputs, _ = read_frames(clip)
    expected = single_image_masks([f[:, :, ::-1] for f in inputs], tmp_path)
    for k, (got, want) in enumerate(zip(masks, expected, strict=True)):
        # Batching 4 frames vs 1 may move a float by an ulp: at most one grey level.
        assert np.abs(got[..., 0].astype(int) - want.astype(int)).max() <= 1, k
    assert len({m[..., 0].tobytes() for m in masks}) > 1  # the disc moves: masks differ


def test_rgba_video_writes_a_png_sequence_with_the_masks_as_alpha(
    clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert segment("--input", str(clip), "--output", str(out), "--format", "rgba") == 0
    files = sorted((out / "clip").glob("*.png"))
    assert [f.name for f in files] == [f"{k:06d}.png" for k in range(FRAMES)]
    inputs, _ = read_frames(clip)
    for path, frame in zip(files, inputs, strict=True):
        img = Image.open(path)
        assert img.mode == "RGBA" and img.size == SIZE
        assert np.array_equal(np.asarray(img)[..., :3], frame[:, :, ::-1])


def test_mp4v_codec_writes_an_mp4_with_every_frame(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert segment("--input", str(clip), "--output", str(out), "--video-codec", "mp4v") == 0
    masks, fps = read_frames(out / "clip.mp4")
    assert len(masks) == FRAMES and fps == pytest.approx(FPS)


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animated_image_gives_one_mask_per_frame(tmp_path: Path, suffix: str) -> None:
    frames = []
    for k in range(4):
        rgb = np.full((90, 120, 3), 30 + 20 * k, np.uint8)
        rgb[30:60, 20 + 15 * k : 50 + 15 * k] = (250, 220, 40)
        frames.append(rgb)
    gif = tmp_path / f"anim{suffix}"
    images = [Image.fromarray(f) for f in frames]
    save = {"lossless": True} if suffix == ".webp" else {}
    images[0].save(gif, save_all=True, append_images=images[1:], duration=80, loop=0, **save)
    decoded = [np.asarray(f.convert("RGB")) for f in _gif_frames(gif)]
    out = tmp_path / "out"
    assert segment("--input", str(gif), "--output", str(out)) == 0
    files = sorted((out / "anim").glob("*.png"))
    assert [f.name for f in files] == [f"{k:06d}.png" for k in range(4)]
    expected = single_image_masks(decoded, tmp_path)
    for path, want in zip(files, expected, strict=True):
        got = np.asarray(Image.open(path))
        assert got.shape == (90, 120)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def _gif_frames(path: Path) -> list[Image.Image]:
    from PIL import ImageSequence

    with Image.open(path) as img:
        return [f.copy() for f in ImageSequence.Iterator(img)]


def test_unreadable_video_is_reported_and_the_run_fails(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    assert segment("--input", str(broken), "--output", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"{broken}: cannot open the video (unreadable, or a container/codec" in err


def test_json_is_refused_for_a_video(clip: Path, tmp_path: Path, capsys) -> None:
    assert segment("--input", str(clip), "--output", str(tmp_path / "o"), "--format", "json") == 1
    assert "format json is per image; a video takes one of png, overlay, rgba" in (
        capsys.readouterr().err
    )


def test_options_not_offered_exit_2(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="focus")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "segment", "--task", "forgery", "--model-repository", str(DEMO_REPOSITORY),
        "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--zoom", "auto",
    ])  # fmt: skip
    assert args.func(args) == 2
    assert "zoom is not offered for task 'forgery'" in capsys.readouterr().err


def test_refined_webp_masks_from_the_cli(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 120, (300, 400, 3), dtype=np.uint8)
    rgb[100:200, 150:260] = (250, 200, 40)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert segment("--input", str(tmp_path / "a.png"), "--output", str(out),
                   "--format", "webp", "--refine", "guided") == 0  # fmt: skip
    img = Image.open(out / "a.webp")
    assert img.format == "WEBP" and img.size == (400, 300)
