"""Point sampling for the mask losses and the matcher (PointRend's, as Mask2Former uses it).

References: detectron2 ``projects/point_rend/point_features.py`` (``point_sample``,
``get_uncertain_point_coords_with_randomness``) and FOCUS ``modeling/criterion.py``
(``calculate_uncertainty``); OFFICIAL_TRAINING.md §6.

Coordinates are normalised to [0, 1] x [0, 1] as (x, y), so predictions at H/4 and targets at
the full canvas are sampled at the same places without resizing either. Random draws come from
an explicit ``torch.Generator``, which makes a training step a pure function of its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``maps`` [N, C, H, W] at ``coords`` [N, P, 2] in [0, 1] -> [N, C, P].

    ``grid_sample`` with ``align_corners=False``: (0, 0) is the top-left corner of the top-left
    pixel, as in detectron2 (outside samples read zeros).
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # [N, P, 1, 2] in [-1, 1]
    return F.grid_sample(maps, grid.to(maps.dtype), align_corners=False).squeeze(3)


def random_points(
    n: int, num_points: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """[n, num_points, 2] uniform in [0, 1)."""
    return torch.rand(n, num_points, 2, device=device, generator=generator)


def uncertainty(logits: Tensor) -> Tensor:
    """-|logit|: points near the decision boundary are the most uncertain."""
    return -logits.abs()


@torch.no_grad()
def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled coordinates for the point losses.

    Draw ``num_points * oversample_ratio`` uniform points, keep the
    ``importance_sample_ratio * num_points`` most uncertain ones (by ``-|logit|``) and fill up
    with fresh uniform points.

    Args:
        logits: [N, 1, H, W] mask logits.

    Returns:
        [N, num_points, 2] coordinates in [0, 1].
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = random_points(n, num_sampled, logits.device, generator)  # [N, S, 2]
    scores = uncertainty(point_sample(logits, coords))[:, 0]  # [N, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = torch.topk(scores, k=num_uncertain, dim=1).indices  # [N, U]
    picked = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # [N, U, 2]
    num_random = num_points - num_uncertain
    if num_random > 0:
        extra = random_points(n, num_random, logits.device, generator)
        picked = torch.cat([picked, extra], dim=1)
    return picked
