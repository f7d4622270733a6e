"""Sine positional encoding over a feature map (DETR / Mask2Former ``PositionEmbeddingSine``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(x: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """[B, C, H, W] -> [B, 2 * num_pos_feats, H, W], normalised coordinates scaled by 2*pi.

    Coordinates are the 1-based cumulative counts of an all-valid mask divided by the last
    count (+1e-6), exactly as the reference computes them.
    """
    b, _, h, w = x.shape
    ones = torch.ones((b, h, w), dtype=torch.float32, device=x.device)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
