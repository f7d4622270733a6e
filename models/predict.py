"""``predict(model, image)``: one RGB image in, soft and binary masks out, through the shared
torch-free pre/post-processing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.config import ModelCard
from models.processing import postprocess, preprocess_with_card


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
    return soft, binary
