"""What a training run reports: console progress, ``log.jsonl`` and TensorBoard (when installed).

Only rank 0 reports. On a terminal the console shows a tqdm bar (step/total, ETA, the running
loss and images/s, updated every step); where stderr is not a terminal (CI logs, ``| tee``) the
same facts are written as one plain line per logged step instead of bar redraws. A run ends
with a one-line summary (steps, time, images/s, first -> last logged loss). ``log.jsonl`` holds
one JSON object per logged step (step, lr, images/s, grad norm and every weighted loss term);
TensorBoard gets the same scalars plus, now and then, a preview image (input | ground truth |
predicted soft foreground). Without the ``tensorboard`` package the TensorBoard part is skipped
quietly (logged at debug level).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor

from models.config import PIXEL_MEAN, PIXEL_STD

logger = logging.getLogger(__name__)


def _summary_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is optional
        logger.debug("TensorBoard logging off: %s", exc)
        return None
    return SummaryWriter(str(log_dir))


def preview_image(image: Tensor, target_masks: Tensor, labels: Tensor, outputs: dict) -> np.ndarray:
    """One sample as float32 [3, H, 3W] in [0, 1]: input | GT foreground | predicted soft fg.

    Args:
        image: [3, H, W] normalised input; target_masks [T, H, W]; labels [T] (0 = fg).
        outputs: the training outputs, batch index 0 is shown.
    """
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    rgb = ((image.detach().float().cpu() * std + mean) / 255.0).clamp(0, 1)
    h, w = rgb.shape[1:]
    gt = torch.zeros(h, w)
    for m, c in zip(target_masks.cpu(), labels.cpu(), strict=True):
        if int(c) == 0:
            gt = m.float()
    probs = outputs["pred_logits"][0].detach().float().softmax(-1)[:, 0].cpu()  # p(fg) per query
    masks = outputs["pred_masks"][0].detach().float().sigmoid()[None]
    masks = torch.nn.functional.interpolate(masks, size=(h, w), mode="bilinear")[0].cpu()
    soft = torch.einsum("q,qhw->hw", probs, masks).clamp(0, 1)
    return torch.cat([rgb, gt.expand(3, h, w), soft.expand(3, h, w)], dim=2).numpy()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Monitor:
    """Rank-0 reporting of one run.

    Args:
        run_dir: the run folder (``log.jsonl`` and ``tb/`` go there).
        total: the run's optimiser steps; start: steps already done (on resume).
        enabled: False on ranks other than 0 (everything becomes a no-op).
        progress: report on the console (a bar on a terminal, plain lines elsewhere).
        tensorboard: try to write TensorBoard events.
        stream: where console progress goes (default: stderr).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        total: int,
        start: int,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.writer: Any = None
        self.stream = stream if stream is not None else sys.stderr
        self.lines = False  # plain progress lines (stream is not a terminal)
        self.log_path = run_dir / "log.jsonl"
        self.total, self.start = total, start
        self.steps = 0  # steps done in this process
        self.images = 0
        self.t_start = time.perf_counter()
        self.window_loss, self.window_steps = 0.0, 0
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        if not enabled:
            return
        if progress:
            if _is_terminal(self.stream):
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total, initial=start, desc="train", unit="step", file=self.stream,
                    dynamic_ncols=True,
                )
            else:
                self.lines = True
        if tensorboard:
            self.writer = _summary_writer(run_dir / "tb")

    def step(self, loss: float, images: int) -> None:
        """One optimiser step done: its loss (the weighted total) and the images it used."""
        self.steps += 1
        self.images += images
        self.window_loss += loss
        self.window_steps += 1
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{self.window_loss / self.window_steps:.3f}",
                img_s=f"{self.images_per_s:.1f}",
                refresh=False,
            )
            self.bar.update(1)

    @property
    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.t_start, 1e-9)

    def eta_seconds(self, step: int) -> float:
        """Remaining time at this process's mean step time."""
        elapsed = time.perf_counter() - self.t_start
        return elapsed / max(self.steps, 1) * max(self.total - step, 0)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it must hold ``step``) to log.jsonl, the console and TensorBoard."""
        if not self.enabled:
            return
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        loss = record["loss"]["total"]
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss
        self.window_loss, self.window_steps = 0.0, 0
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}",
                img_s=f"{record['images_per_s']:.1f}",
            )
        if self.lines:
            step = record["step"]
            self._say(
                f"train step {step}/{self.total}  loss {loss:.4f}  "
                f"{record['images_per_s']:.1f} images/s  lr {record['lr']:.2e}  "
                f"ETA {_duration(self.eta_seconds(step))}"
            )
        if self.writer is not None:
            step = record["step"]
            for term, value in record["loss"].items():
                self.writer.add_scalar(f"loss/{term}", value, step)
            for key in ("lr", "images_per_s", "grad_norm"):
                self.writer.add_scalar(f"train/{key}", record[key], step)

    def _say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, picture, step)

    @property
    def wants_images(self) -> bool:
        return self.enabled and self.writer is not None

    def summary(self, step: int) -> str:
        """The run in one line: steps, wall time, images/s, first -> last logged loss."""
        seconds = time.perf_counter() - self.t_start
        text = (
            f"train: {self.steps} steps (to step {step}/{self.total}) in {_duration(seconds)}, "
            f"{self.images_per_s:.1f} images/s"
        )
        if self.first_loss is not None and self.last_loss is not None:
            text += f", loss {self.first_loss:.4f} -> {self.last_loss:.4f}"
        return text

    def close(self, step: int | None = None) -> None:
        """Close the bar and the event file; with ``step`` (a run that ended normally) print
        the one-line summary on the console."""
        if self.bar is not None:
            self.bar.close()
        if self.enabled and step is not None and (self.bar is not None or self.lines):
            self._say(self.summary(step))
        if self.writer is not None:
            self.writer.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
