"""What a training run reports: a progress bar, ``log.jsonl`` and TensorBoard (when installed).

Only rank 0 reports. ``log.jsonl`` holds one JSON object per logged step (step, lr, images/s,
grad norm and every weighted loss term); TensorBoard gets the same scalars plus, now and then,
a preview image (input | ground truth | predicted soft foreground). Without the ``tensorboard``
package the TensorBoard part is skipped quietly (logged at debug level).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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


class Monitor:
    """Rank-0 reporting of one run.

    Args:
        run_dir: the run folder (``log.jsonl`` and ``tb/`` go there).
        total: the run's optimiser steps; start: steps already done (on resume).
        enabled: False on ranks other than 0 (everything becomes a no-op).
        progress: show the tqdm bar.
        tensorboard: try to write TensorBoard events.
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
    ) -> None:
        self.enabled = enabled
        self.bar = None
        self.writer = None
        self.log_path = run_dir / "log.jsonl"
        if not enabled:
            return
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=None)
        if tensorboard:
            self.writer = _summary_writer(run_dir / "tb")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it must hold ``step``) to log.jsonl, the bar and TensorBoard."""
        if not self.enabled:
            return
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']['total']:.3f}",
                lr=f"{record['lr']:.2e}",
                img_s=f"{record['images_per_s']:.2f}",
            )
        if self.writer is not None:
            step = record["step"]
            for term, value in record["loss"].items():
                self.writer.add_scalar(f"loss/{term}", value, step)
            for key in ("lr", "images_per_s", "grad_norm"):
                self.writer.add_scalar(f"train/{key}", record[key], step)

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, picture, step)

    @property
    def wants_images(self) -> bool:
        return self.enabled and self.writer is not None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
