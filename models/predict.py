"""The network in PyTorch behind the :class:`models.contract.Predictor` API, and ``predict``:
one RGB image in, soft and binary masks out, through the shared torch-free pre/post-processing.

:class:`TorchPredictor` is what the service's torch backend, export's parity reference and
``focus eval`` all run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.config import ModelCard
from models.contract import check_outputs
from models.processing import postprocess, preprocess_with_card


class TorchPredictor:
    """An eval-mode FOCUS module on ``device``; numpy in, float32 numpy out.

    ``precision`` bf16 / fp16 runs the forward under ``torch.autocast`` (weights stay fp32;
    matrix products and convolutions in the lower precision): bf16 on CPU or CUDA, fp16 on CUDA.
    """

    AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(
        self, model: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32"
    ) -> None:
        self.device = torch.device(device)
        if precision not in ("fp32", *self.AUTOCAST):
            raise ValueError(f"unknown torch precision {precision!r}; use fp32, bf16 or fp16")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 autocast needs CUDA; on the CPU use bf16")
        self.precision = precision
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def infer(self, image: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, _, h, w = image.shape
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(self.device)
        e = torch.from_numpy(np.ascontiguousarray(edges, np.float32)).to(self.device)
        dtype = self.AUTOCAST.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            class_probs, mask_logits = self.model(x, e)
        return check_outputs(
            class_probs.float().cpu().numpy(), mask_logits.float().cpu().numpy(), n, h, w
        )


@torch.no_grad()
def predict(model: nn.Module, card: ModelCard, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 RGB -> (soft foreground mask float32 HxW in [0, 1], binary mask bool HxW)."""
    prepared = preprocess_with_card(rgb, card)
    device = next(model.parameters()).device
    image = torch.from_numpy(prepared.image)[None].to(device)
    edges = torch.from_numpy(prepared.edges)[None].to(device)
    was_training = model.training
    model.eval()
    try:
        class_probs, mask_logits = model(image, edges)
    finally:
        model.train(was_training)
    soft, binary = postprocess(
        class_probs[0].float().cpu().numpy(),
        mask_logits[0].float().cpu().numpy(),
        prepared.padded_size,
        prepared.resized_size,
        prepared.original_size,
    )
    assert binary is not None  # with_binary defaults to True
    return soft, binary
