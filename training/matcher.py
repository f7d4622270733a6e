"""Hungarian matching of the two queries to the image's targets (foreground, background).

Reference: FOCUS ``focus/modeling/matcher.py`` (Mask2Former's ``HungarianMatcher``),
OFFICIAL_TRAINING.md §6. Per image, all predictions and targets are sampled at the same
``num_points`` uniform random points; the cost of assigning query q to target t is

    C[q, t] = cost_class * (-p_q(class_t)) + cost_mask * BCE(q, t) + cost_dice * dice(q, t)

with BCE the mean over points and dice = 1 - (2 sum p t + 1) / (sum p + sum t + 1), computed in
fp32 (also under autocast), solved with scipy's ``linear_sum_assignment``. No box or CLIP cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from training.points import point_sample, random_points

Indices = list[tuple[Tensor, Tensor]]  # per image: (query indices, target indices), int64


def batch_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE of every prediction against every target: [Q, P] x [T, P] -> [Q, T]."""
    p = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / p


def batch_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every prediction against every target: [Q, P] x [T, P] -> [Q, T]."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass(frozen=True)
class HungarianMatcher:
    """Args:
    cost_class, cost_mask, cost_dice: weights of the three costs (reference: 1, 5, 5).
    num_points: shared uniform points per image (reference: 12544 = 112²).
    """

    cost_class: float = 1.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = 12544

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")

    def cost_matrix(
        self,
        logits: Tensor,
        masks: Tensor,
        labels: Tensor,
        target_masks: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One image: logits [Q, K+1], masks [Q, h, w], labels [T], target_masks [T, H, W]
        -> cost [Q, T] (fp32)."""
        with torch.autocast(masks.device.type, enabled=False):
            probs = logits.float().softmax(-1)  # [Q, K+1]
            cost_class = -probs[:, labels]  # [Q, T]
            coords = random_points(1, self.num_points, masks.device, generator)  # [1, P, 2]
            pred = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))
            tgt = point_sample(
                target_masks[:, None].float(), coords.expand(target_masks.shape[0], -1, -1)
            )
            pred, tgt = pred[:, 0], tgt[:, 0]  # [Q, P], [T, P]
            return (
                self.cost_mask * batch_sigmoid_ce(pred, tgt)
                + self.cost_class * cost_class
                + self.cost_dice * batch_dice(pred, tgt)
            )

    @torch.no_grad()
    def __call__(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> Indices:
        """outputs: {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, h, w]}; targets: per image
        {"labels" [T], "masks" [T, H, W]}.

        Returns, per image, (query indices, target indices) of the min(Q, T) matched pairs,
        sorted by query index.
        """
        indices: Indices = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(
                outputs["pred_logits"][b],
                outputs["pred_masks"][b],
                target["labels"],
                target["masks"],
                generator,
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
