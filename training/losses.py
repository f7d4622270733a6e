"""The FOCUS training criterion: matched class, mask, box and CLIP-distillation losses.

Reference: FOCUS ``focus/modeling/criterion.py`` (Mask2Former's ``SetCriterion``) and
``focus/focus.py`` (weights, ``prepare_targets``); OFFICIAL_TRAINING.md §3 and §6.

Per prediction head (the final one and every auxiliary head, each matched anew):

* ``ce``   x1: cross-entropy over (fg, bg, no-object) with class weights [1, 1, 0.1]; queries
  without a matched target must predict no-object (class 2);
* ``mask`` x5 and ``dice`` x5: point losses on ``num_points`` importance-sampled points
  (oversample 3, 75 % most uncertain by -|logit|, 25 % uniform), each summed over matched masks
  and divided by ``num_masks`` (the batch's target count, averaged over processes, min 1);
  padding (label 255) is 0 in both target masks;
* ``bbox`` x5: L1 between sigmoid(pred box) and the tight target box, cxcywh in [0, 1];
  ``giou`` x2: 1 - GIoU; both summed over matched pairs / ``num_masks``;
* ``clip`` x the task's CLIP weight (1, forgery 0.01), only when the model returned
  ``pred_queries`` (``focus train --clip-weights``): the symmetric soft-target contrastive loss
  of §6 step 6 with tau = 0.07.

The loss dict keys are the reference's: ``loss_ce``, ``loss_mask``, ``loss_dice``, ``loss_bbox``,
``loss_giou``, ``loss_clip`` for the final head and ``loss_<term>_<i>`` for auxiliary head i.
The reference also lists ``loss_cosine``/``loss_l2``; it never computes them (§6), nor do we.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from training.matcher import HungarianMatcher, Indices
from training.points import point_sample, uncertain_points

TERMS: tuple[str, ...] = ("ce", "mask", "dice", "bbox", "giou", "clip")
CLIP_TEMPERATURE = 0.07


# ----------------------------------------------------------------------------- boxes


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def paired_generalized_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of row i of ``a`` with row i of ``b`` (xyxy, [N, 4] each) -> [N].

    The reference takes the diagonal of the full pairwise matrix; this is the same diagonal.
    """
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull


# ----------------------------------------------------------------------------- point losses


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """[M, P] logits and targets in [0, 1] -> sum over masks of the mean BCE / num_masks."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """[M, P] -> sum over masks of 1 - (2 sum pt + 1) / (sum p + sum t + 1), / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Row-wise -sum_j s_ij log softmax(z_i)_j -> [rows]."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(1)


def clip_contrastive_loss(image_features: Tensor, text_features: Tensor) -> Tensor:
    """§6 step 6, per image then averaged: [B, Q, E] x [B, Q, E] -> scalar.

    logits = T I^T / tau; S = softmax(tau (I I^T + T T^T) / 2) row-wise (not detached);
    loss = mean over rows of (CE(logits, S) + CE(logits^T, S^T)) / 2.
    """
    losses = []
    for img, txt in zip(image_features.float(), text_features.float(), strict=True):
        logits = txt @ img.T / CLIP_TEMPERATURE  # [Q, Q]
        similarity = F.softmax((img @ img.T + txt @ txt.T) / 2 * CLIP_TEMPERATURE, dim=-1)
        texts_loss = soft_cross_entropy(logits, similarity)
        images_loss = soft_cross_entropy(logits.T, similarity.T)
        losses.append(((images_loss + texts_loss) / 2).mean())
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------- criterion


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms (reference: 1, 5, 5, 5, 2 and the task's CLIP weight)."""

    ce: float = 1.0
    mask: float = 5.0
    dice: float = 5.0
    bbox: float = 5.0
    giou: float = 2.0
    clip: float = 1.0

    def of(self, key: str) -> float:
        """Weight of a loss key such as ``loss_dice`` or ``loss_dice_3``."""
        return float(getattr(self, term_of(key)))


def term_of(key: str) -> str:
    """``loss_dice_3`` -> ``dice``."""
    parts = key.split("_")
    if parts[0] != "loss" or parts[1] not in TERMS:
        raise ValueError(f"not a loss key: {key!r}")
    return parts[1]


class FocusCriterion:
    """Matching + losses for one batch, with deep supervision.

    Args:
        matcher: the Hungarian matcher (its ``num_points`` is usually this one's too).
        weights: per-term weights (used by :meth:`total`).
        num_classes: object classes (2); the logits carry one more (no-object).
        eos_coef: class weight of no-object (0.1).
        num_points, oversample_ratio, importance_sample_ratio: the point losses
            (12544, 3.0, 0.75 in the reference).
    """

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        weights: LossWeights,
        num_classes: int = 2,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        if num_points < 1 or oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                "need num_points >= 1, oversample_ratio >= 1, 0 <= importance_sample_ratio <= 1"
            )
        self.matcher = matcher
        self.weights = weights
        self.num_classes = num_classes
        self.empty_weight = torch.ones(num_classes + 1)
        self.empty_weight[-1] = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    # -- single terms ---------------------------------------------------------------------

    def loss_labels(self, outputs: dict, targets: list[dict], indices: Indices) -> Tensor:
        logits = outputs["pred_logits"].float()  # [B, Q, K+1]
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"][tgt]
        weight = self.empty_weight.to(logits.device)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def loss_masks(
        self,
        outputs: dict,
        targets: list[dict],
        indices: Indices,
        num_masks: float,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        pred = torch.cat([outputs["pred_masks"][b, src] for b, (src, _) in enumerate(indices)])
        tgt = torch.cat([t["masks"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
        pred = pred[:, None].float()  # [M, 1, h, w]
        tgt = tgt[:, None].to(pred.dtype)  # [M, 1, H, W]
        with torch.no_grad():
            coords = uncertain_points(
                pred,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
                generator,
            )
            labels = point_sample(tgt, coords)[:, 0]  # [M, P]
        logits = point_sample(pred, coords)[:, 0]  # [M, P]
        return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def loss_boxes(
        self, outputs: dict, targets: list[dict], indices: Indices, num_masks: float
    ) -> tuple[Tensor, Tensor]:
        src = torch.cat([outputs["pred_boxes"][b, s] for b, (s, _) in enumerate(indices)])
        src = src.float().sigmoid()  # [M, 4] cxcywh
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)]).to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_masks
        giou = paired_generalized_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        return loss_bbox, (1 - giou).sum() / num_masks

    # -- all terms ------------------------------------------------------------------------

    def head_losses(
        self,
        outputs: dict,
        targets: list[dict],
        num_masks: float,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """All terms of one prediction head, matched afresh."""
        indices = self.matcher(outputs, targets, generator)
        losses = {"loss_ce": self.loss_labels(outputs, targets, indices)}
        losses["loss_mask"], losses["loss_dice"] = self.loss_masks(
            outputs, targets, indices, num_masks, generator
        )
        losses["loss_bbox"], losses["loss_giou"] = self.loss_boxes(
            outputs, targets, indices, num_masks
        )
        if "pred_queries" in outputs:
            q = outputs["pred_queries"]
            losses["loss_clip"] = clip_contrastive_loss(q["image_features"], q["text_features"])
        return losses

    def __call__(
        self,
        outputs: dict,
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """outputs: the model's training dict; targets: per image {"labels" [T] int64,
        "masks" [T, H, W] bool, "boxes" [T, 4] cxcywh}, on the outputs' device.

        Returns the unweighted losses (``loss_<term>`` and ``loss_<term>_<i>``).
        """
        device = outputs["pred_logits"].device
        count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world = dist.get_world_size()
        num_masks = max(count.item() / world, 1.0)
        losses = self.head_losses(outputs, targets, num_masks, generator)
        for i, aux in enumerate(outputs.get("aux_outputs", ())):
            for key, value in self.head_losses(aux, targets, num_masks, generator).items():
                losses[f"{key}_{i}"] = value
        return losses

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum the optimiser minimises."""
        return sum(self.weights.of(k) * v for k, v in losses.items())  # type: ignore[return-value]


def summarise(losses: dict[str, Tensor], weights: LossWeights) -> dict[str, float]:
    """Weighted per-term sums over all heads (``ce``, ``mask``, ...) plus ``total``, for logs."""
    keys = list(losses)
    values = torch.stack([losses[k].detach().float() for k in keys]).tolist()  # one sync
    out: dict[str, float] = {}
    for key, value in zip(keys, values, strict=True):
        term = term_of(key)
        out[term] = out.get(term, 0.0) + weights.of(key) * value
    out["total"] = sum(out.values())
    return out
