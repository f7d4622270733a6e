"""Console progress of a training run: a tqdm bar on a terminal (step, ETA, loss, images/s),
plain lines elsewhere, and a one-line summary at the end."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from training.monitor import Monitor


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(step: int, loss: float) -> dict:
    return {"step": step, "lr": 1e-3, "images_per_s": 16.0, "grad_norm": 0.5, "seconds": 1.0,
            "loss": {"total": loss, "ce": loss / 2}}


def test_terminal_gets_a_bar_with_step_eta_loss_and_images_per_second(tmp_path: Path) -> None:
    stream = _Terminal()
    monitor = Monitor(tmp_path, total=4, start=0, tensorboard=False, stream=stream)
    for step, loss in enumerate((2.0, 1.0, 0.5, 0.25), start=1):
        monitor.step(loss, images=8)
        if step % 2 == 0:
            monitor.log(_record(step, loss))
    monitor.close(4)
    text = stream.getvalue()
    last_bar = text.split("\r")[-1].splitlines()[0]
    assert re.search(r"train: 100%.*\| 4/4 \[\d\d:\d\d<00:00", last_bar), last_bar
    assert "loss=0.250" in last_bar and "img_s=" in last_bar
    assert text.rstrip().splitlines()[-1].startswith("train: 4 steps (to step 4/4) in 0:0")
    assert text.rstrip().endswith("loss 1.0000 -> 0.2500")
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4]


def test_bar_shows_the_running_loss_before_the_first_log_line(tmp_path: Path) -> None:
    stream = _Terminal()
    monitor = Monitor(tmp_path, total=100, start=0, tensorboard=False, stream=stream)
    monitor.step(3.0, images=8)
    monitor.step(1.0, images=8)
    monitor.bar.refresh()
    assert "loss=2.000" in stream.getvalue().split("\r")[-1]
    monitor.close()  # not ended normally: no summary line
    assert "steps (to step" not in stream.getvalue()


def test_without_a_terminal_each_logged_step_is_one_plain_line(tmp_path: Path) -> None:
    stream = io.StringIO()
    monitor = Monitor(tmp_path, total=10, start=6, tensorboard=False, stream=stream)
    monitor.step(1.5, images=4)  # steps 7 and 8
    monitor.step(1.5, images=4)
    monitor.log(_record(8, 1.5))
    monitor.close(8)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2
    assert re.fullmatch(
        r"train step 8/10  loss 1\.5000  16\.0 images/s  lr 1\.00e-03  ETA 0:\d\d", lines[0]
    ), lines[0]
    assert lines[1].startswith("train: 2 steps (to step 8/10) in ")


def test_progress_off_and_other_ranks_print_nothing(tmp_path: Path) -> None:
    for kwargs in ({"progress": False}, {"enabled": False}):
        stream = _Terminal()
        monitor = Monitor(tmp_path, total=2, start=0, tensorboard=False, stream=stream, **kwargs)
        monitor.step(1.0, images=1)
        monitor.log(_record(1, 1.0))
        monitor.close(1)
        assert stream.getvalue() == "", kwargs
