"""``focus segment`` and ``focus serve`` (the service's CLI subcommands)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_testing import free_port, image_bytes

from service.cli import register

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="focus")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes(60, 80, seed=1))
    (root / "a.jpg").write_bytes(image_bytes(50, 40, seed=2, fmt="JPEG"))
    (root / "sub" / "b.webp").write_bytes(image_bytes(30, 90, seed=3, fmt="WEBP"))
    (root / "notes.txt").write_text("not an image")
    return root


def test_segment_folder_writes_one_mask_per_image(model_repository, folder, tmp_path) -> None:
    out = tmp_path / "out"
    args = _parse(
        "segment", "--task", "cod", "--input", str(folder), "--output", str(out),
        "--model-repository", str(model_repository),
    )  # fmt: skip
    assert args.func(args) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a.png", "a_png.png", "sub/b.png"] or written == [
        "a.png", "a_jpg.png", "sub/b.png",
    ]  # fmt: skip
    sizes = sorted(Image.open(p).size for p in out.rglob("*.png"))
    assert sizes == [(40, 50), (80, 60), (90, 30)]
    assert all(Image.open(p).mode == "L" for p in out.rglob("*.png"))


def test_segment_json_matches_the_http_result(model_repository, client, tmp_path) -> None:
    data = image_bytes(60, 80, seed=7)
    (tmp_path / "x.png").write_bytes(data)
    args = _parse(
        "segment", "--task", "camouflage", "--input", str(tmp_path / "x.png"),
        "--output", str(tmp_path / "out"), "--format", "json", "--threshold", "0.4",
        "--model-repository", str(model_repository), "--backend", "onnxruntime",
    )  # fmt: skip
    assert args.func(args) == 0
    cli = json.loads((tmp_path / "out" / "x.json").read_text())
    http = client.post(
        "/segment/camouflage?format=json&threshold=0.4",
        content=data,
        headers={"content-type": "image/png"},
    ).json()
    for key in ("mask_png_base64", "foreground_fraction", "bbox", "mean_confidence", "threshold"):
        assert cli[key] == http[key], key
    assert cli["model"] == http["model"]
    mask = Image.open(io.BytesIO(base64.b64decode(cli["mask_png_base64"])))
    assert mask.size == (80, 60)


@pytest.mark.parametrize("fmt", ["rgba", "overlay"])
def test_segment_image_formats(model_repository, tmp_path, fmt) -> None:
    (tmp_path / "x.png").write_bytes(image_bytes(60, 80))
    args = _parse(
        "segment", "--task", "sd", "--input", str(tmp_path / "x.png"), "--output",
        str(tmp_path / "out"), "--format", fmt, "--model-repository", str(model_repository),
    )  # fmt: skip
    assert args.func(args) == 0
    img = Image.open(tmp_path / "out" / "x.png")
    assert (img.mode, img.size) == ("RGBA" if fmt == "rgba" else "RGB", (80, 60))


def test_segment_reports_broken_files_and_continues(model_repository, folder, tmp_path, capsys):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    args = _parse(
        "segment", "--task", "cod", "--input", str(folder), "--output", str(tmp_path / "out"),
        "--model-repository", str(model_repository),
    )  # fmt: skip
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "broken.png: cannot identify the image" in err
    assert "3 of 4 images segmented" in err


def test_segment_unknown_or_missing_task_exits_2(model_repository, tmp_path, capsys) -> None:
    (tmp_path / "x.png").write_bytes(image_bytes(20, 20))
    for task, message in (
        ("nope", "unknown task 'nope'"),
        ("forgery", "no model for task 'forgery'"),
    ):
        args = _parse(
            "segment", "--task", task, "--input", str(tmp_path / "x.png"), "--output",
            str(tmp_path / "out"), "--model-repository", str(model_repository),
        )  # fmt: skip
        assert args.func(args) == 2
        assert message in capsys.readouterr().err


def test_segment_threshold_out_of_range_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        _parse("segment", "--task", "cod", "--input", "x", "--output", "y", "--threshold", "2")


def test_serve_runs_uvicorn_torch_free_and_stops_gracefully(model_repository) -> None:
    port = free_port()
    code = (
        "import argparse, sys\n"
        "from service.cli import register\n"
        "p = argparse.ArgumentParser(prog='focus')\n"
        "register(p.add_subparsers(dest='command', required=True))\n"
        "args = p.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    env = {**os.environ, "FOCUS_INTRA_OP_THREADS": "1", "FOCUS_LOG_LEVEL": "info"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--model-repository", str(model_repository)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        response = httpx.post(
            f"{base}/segment/cod",
            content=image_bytes(60, 80),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200
        maps = Path(f"/proc/{process.pid}/maps")
        if maps.exists():
            assert "libtorch" not in maps.read_text()  # torch was never loaded
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    # uvicorn shuts down gracefully (lifespan included), then re-raises the signal it caught
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete." in stderr
    assert "Traceback" not in stderr


def _segment(model_repository: Path, *argv: str) -> int:
    args = _parse("segment", "--task", "sod", "--model-repository", str(model_repository), *argv)
    return args.func(args)


def test_segment_refuses_to_replace_its_input_file(model_repository, tmp_path, capsys) -> None:
    photo = tmp_path / "photo.png"
    original = image_bytes(40, 50, seed=4)
    photo.write_bytes(original)
    for output in (photo, tmp_path):  # the file itself, or its folder
        assert _segment(model_repository, "--input", str(photo), "--output", str(output)) == 2
        err = capsys.readouterr().err
        assert f"the result for {photo} would replace that input file" in err
        assert "--overwrite" in err
        assert photo.read_bytes() == original
    code = _segment(
        model_repository, "--input", str(photo), "--output", str(photo), "--overwrite"
    )
    assert code == 0
    assert Image.open(photo).mode == "L"  # the mask replaced the photo, as asked


def test_segment_in_place_never_replaces_another_input(model_repository, tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(image_bytes(30, 40, seed=5, fmt="JPEG"))
    (tmp_path / "b.jpg").write_bytes(image_bytes(30, 40, seed=6, fmt="JPEG"))
    png = image_bytes(30, 40, seed=7)
    (tmp_path / "a.png").write_bytes(png)
    # a.png is an input: refused as a whole before anything is written
    assert _segment(model_repository, "--input", str(tmp_path), "--output", str(tmp_path)) == 2
    assert "a.png would replace that input file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png", "b.jpg"]
    # with --overwrite only a.png's own result replaces it; a.jpg's goes beside it
    code = _segment(
        model_repository, "--input", str(tmp_path), "--output", str(tmp_path), "--overwrite"
    )
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.jpg", "a.png", "a_jpg.png", "b.jpg", "b.png"]
    assert Image.open(tmp_path / "a.png").mode == "L"


def test_segment_single_file_to_a_named_result(model_repository, tmp_path) -> None:
    (tmp_path / "x.jpg").write_bytes(image_bytes(30, 40, seed=8, fmt="JPEG"))
    out = tmp_path / "masks" / "mine.json"
    code = _segment(
        model_repository, "--input", str(tmp_path / "x.jpg"), "--output", str(out),
        "--format", "json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out.read_text())["task"] == "salient"


def test_segment_output_that_is_a_file_is_a_usage_error(model_repository, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(image_bytes(20, 20))
    (tmp_path / "notes.txt").write_text("keep me")
    code = _segment(
        model_repository, "--input", str(tmp_path / "x.png"), "--output",
        str(tmp_path / "notes.txt"),
    )  # fmt: skip
    assert code == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_segment_missing_repository_names_both_ways_to_set_it(tmp_path, capsys) -> None:
    (tmp_path / "x.png").write_bytes(image_bytes(20, 20))
    code = _segment(
        tmp_path / "nowhere", "--input", str(tmp_path / "x.png"), "--output", str(tmp_path / "o")
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"model repository {tmp_path / 'nowhere'} is not a directory" in err
    assert "--model-repository DIR or FOCUS_MODEL_REPOSITORY=DIR" in err
    assert not (tmp_path / "o").exists()


def test_segment_skips_its_results_folder_inside_the_input(model_repository, folder, tmp_path):
    out = folder / "masks"
    for _ in range(2):  # the second run must not segment the first run's masks
        assert _segment(model_repository, "--input", str(folder), "--output", str(out)) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a.png", "a_png.png", "sub/b.png"]


def test_segment_in_place_safety_covers_other_encodings(model_repository, tmp_path, capsys):
    webp = tmp_path / "a.webp"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(webp, "WEBP", lossless=True)
    original = webp.read_bytes()
    (tmp_path / "b.png").write_bytes(image_bytes(30, 40, seed=9))
    argv = ("--input", str(tmp_path), "--output", str(tmp_path), "--format", "webp")
    assert _segment(model_repository, *argv) == 2  # a.webp's mask would be a.webp
    assert f"the result for {webp} would replace that input file" in capsys.readouterr().err
    assert webp.read_bytes() == original and not (tmp_path / "b.webp").exists()
    assert _segment(model_repository, *argv, "--overwrite") == 0
    assert Image.open(webp).format == "WEBP" and Image.open(tmp_path / "b.webp").size == (40, 30)


def test_segment_never_writes_a_mask_video_over_its_video(model_repository, tmp_path, capsys):
    import cv2

    clip = tmp_path / "clip.mkv"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"FFV1"), 5.0, (64, 48), True)
    assert writer.isOpened()
    for k in range(3):
        writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    writer.release()
    original = clip.read_bytes()
    for extra in ((), ("--overwrite",)):  # read while written: refused even when asked
        code = _segment(
            model_repository, "--input", str(clip), "--output", str(tmp_path), *extra
        )
        assert code == 2
        err = capsys.readouterr().err
        assert f"the result for {clip} would replace that input file" in err
        assert "--overwrite to replace it" not in err
    assert clip.read_bytes() == original
    # another codec's container is another name: no clash
    code = _segment(model_repository, "--input", str(clip), "--output", str(tmp_path),
                    "--video-codec", "mp4v")  # fmt: skip
    assert code == 0 and (tmp_path / "clip.mp4").is_file() and clip.read_bytes() == original
