"""Matcher, point sampling and the loss terms, on hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.augment import IGNORE, make_targets
from training.losses import (
    FocusCriterion,
    LossWeights,
    box_cxcywh_to_xyxy,
    clip_contrastive_loss,
    dice_loss,
    paired_generalized_iou,
    sigmoid_ce_loss,
    summarise,
)
from training.matcher import HungarianMatcher, batch_dice, batch_sigmoid_ce
from training.points import point_sample, uncertain_points

S = 128  # canvas side of the synthetic targets


def _targets(fg_first: bool = True) -> dict[str, torch.Tensor]:
    label = np.full((S, S), 1, np.uint8)
    label[32:80, 16:112] = 0  # a foreground rectangle
    label[:, 120:] = IGNORE  # padding on the right
    labels, masks, boxes = make_targets(label)
    t = {"labels": torch.from_numpy(labels), "masks": torch.from_numpy(masks),
         "boxes": torch.from_numpy(boxes)}
    if not fg_first:
        t = {k: v.flip(0) for k, v in t.items()}
    return t


def _perfect_outputs(t: dict[str, torch.Tensor], swap: bool) -> dict[str, torch.Tensor]:
    """Predictions that equal the targets: query 1 is fg when ``swap`` else query 0."""
    low = torch.nn.functional.interpolate(t["masks"][None].float(), size=(S, S))[0]
    logits = torch.full((2, 3), -20.0)
    masks = (low * 2 - 1) * 30  # +-30 logits
    boxes = torch.logit(t["boxes"].clamp(1e-6, 1 - 1e-6))
    for q, c in enumerate(t["labels"].tolist()):
        logits[q, c] = 20.0
    if swap:
        logits, masks, boxes = logits.flip(0), masks.flip(0), boxes.flip(0)
    return {"pred_logits": logits[None], "pred_masks": masks[None], "pred_boxes": boxes[None]}


def test_make_targets_leave_padding_out_of_both_masks() -> None:
    t = _targets()
    assert t["labels"].tolist() == [0, 1]
    assert not t["masks"][:, :, 120:].any()
    assert (t["masks"][0] ^ t["masks"][1])[:, :120].all()


def test_batch_costs_match_hand_computation() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -2.0]])  # 2 predictions x 2 points
    targets = torch.tensor([[1.0, 0.0]])
    bce = batch_sigmoid_ce(logits, targets)
    expected = [
        math.log(2),
        (math.log1p(math.exp(-2)) + math.log1p(math.exp(-2))) / 2,
    ]
    torch.testing.assert_close(bce[:, 0], torch.tensor(expected))
    p = torch.sigmoid(torch.tensor(2.0)).item()
    dice = batch_dice(logits, targets)
    torch.testing.assert_close(
        dice[:, 0], torch.tensor([1 - (2 * 0.5 + 1) / (1 + 1 + 1), 1 - (2 * p + 1) / (1 + 1 + 1)])
    )


@pytest.mark.parametrize("swap", [False, True])
def test_matcher_picks_the_right_permutation(swap: bool) -> None:
    t = _targets()
    out = _perfect_outputs(t, swap)
    (rows, cols), = HungarianMatcher(num_points=500)(out, [t], torch.Generator().manual_seed(0))
    assert rows.tolist() == [0, 1]
    assert cols.tolist() == ([1, 0] if swap else [0, 1])


def test_matcher_class_cost_decides_when_masks_are_equal() -> None:
    t = _targets()
    out = {"pred_logits": torch.tensor([[[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]]]),
           "pred_masks": torch.zeros(1, 2, 8, 8)}
    matcher = HungarianMatcher(num_points=100)
    cost = matcher.cost_matrix(out["pred_logits"][0], out["pred_masks"][0], t["labels"],
                               t["masks"], torch.Generator().manual_seed(0))
    probs = out["pred_logits"][0].softmax(-1)
    # Mask costs are the same for both queries, so cost differences are -p differences.
    diff = cost[0] - cost[1]
    torch.testing.assert_close(diff, -(probs[0, [0, 1]] - probs[1, [0, 1]]))
    (rows, cols), = matcher(out, [t], torch.Generator().manual_seed(0))
    assert cols.tolist() == [1, 0]  # query 0 predicts bg, query 1 fg


def test_perfect_prediction_has_near_zero_losses() -> None:
    t = _targets()
    out = _perfect_outputs(t, swap=True)
    # Uniform points: importance sampling would pick mostly edge points, where the bilinear
    # targets are fractional and no prediction scores 0.
    criterion = FocusCriterion(
        matcher=HungarianMatcher(num_points=2000), weights=LossWeights(), num_points=2000,
        importance_sample_ratio=0.0,
    )
    losses = criterion(out, [t], torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_bbox", "loss_giou"}
    assert losses["loss_ce"] < 1e-6
    assert losses["loss_bbox"] < 1e-4 and losses["loss_giou"] < 1e-4
    assert losses["loss_dice"] < 0.01 and losses["loss_mask"] < 0.1


def test_unmatched_query_targets_no_object_with_weight_0_1() -> None:
    label = np.ones((S, S), np.uint8)  # background only: one target
    labels, masks, boxes = make_targets(label)
    t = {"labels": torch.from_numpy(labels), "masks": torch.from_numpy(masks),
         "boxes": torch.from_numpy(boxes)}
    logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])
    out = {"pred_logits": logits, "pred_masks": torch.full((1, 2, 8, 8), 5.0),
           "pred_boxes": torch.zeros(1, 2, 4)}
    out["pred_masks"][0, 1] = -5.0  # query 0 covers everything: it matches the bg target
    criterion = FocusCriterion(matcher=HungarianMatcher(num_points=64), weights=LossWeights(),
                               num_points=64)
    losses = criterion(out, [t], torch.Generator().manual_seed(0))
    ce_matched = -torch.log_softmax(logits[0, 0], -1)[1]
    ce_empty = math.log(3)
    expected = (1.0 * ce_matched + 0.1 * ce_empty) / 1.1
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_giou_of_identical_boxes_is_one_and_disjoint_is_hand_computed() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    torch.testing.assert_close(paired_generalized_iou(a, b), torch.tensor([1.0, -1.0 / 3.0]))
    box = box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]]))
    torch.testing.assert_close(box, torch.tensor([[0.4, 0.3, 0.6, 0.7]]))


def test_point_losses_divide_by_num_masks() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, 4.0), torch.tensor(math.log(2) / 2))
    d0 = 1 - (2 * 0.5 + 1) / (1 + 1 + 1)
    d1 = 1 - (2 * 1.0 + 1) / (1 + 2 + 1)
    torch.testing.assert_close(dice_loss(logits, targets, 2.0), torch.tensor((d0 + d1) / 2))


def test_clip_loss_matches_the_formula() -> None:
    tau = 0.07
    eye = torch.eye(2)[None]  # one image, I = T = identity features
    z = torch.tensor([1 / tau, 0.0])
    log_sm = z - torch.logsumexp(z, 0)
    s = torch.softmax(torch.tensor([tau, 0.0]), 0)
    per_row = -(s * log_sm).sum()
    torch.testing.assert_close(clip_contrastive_loss(eye, eye), per_row)
    # Swapped text features make the pairs disagree: the loss grows.
    assert clip_contrastive_loss(eye, eye.flip(1)) > per_row


def test_uncertain_points_prefer_the_decision_boundary() -> None:
    logits = torch.linspace(-10, 10, 64).expand(64, 64)[None, None].clone()  # boundary at x=0.5
    coords = uncertain_points(logits, 100, 3.0, 1.0, torch.Generator().manual_seed(0))
    assert coords.shape == (1, 100, 2)
    assert (coords[0, :, 0] - 0.5).abs().max() < 0.25
    mixed = uncertain_points(logits, 100, 3.0, 0.75, torch.Generator().manual_seed(0))
    assert mixed.shape == (1, 100, 2)


def test_point_sample_reads_pixel_centres() -> None:
    maps = torch.arange(4.0).view(1, 1, 2, 2)
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])
    torch.testing.assert_close(point_sample(maps, coords), torch.arange(4.0).view(1, 1, 4))


def test_deep_supervision_rematches_every_head_and_weights_terms() -> None:
    t = _targets()
    good, bad = _perfect_outputs(t, swap=False), _perfect_outputs(t, swap=True)
    out = dict(good, aux_outputs=[bad, good])
    criterion = FocusCriterion(matcher=HungarianMatcher(num_points=500), weights=LossWeights(),
                               num_points=500)
    losses = criterion(out, [t], torch.Generator().manual_seed(0))
    assert {"loss_ce_0", "loss_dice_1", "loss_giou_1"} <= set(losses)
    # Each head is matched on its own: the swapped head is as good as the others.
    assert losses["loss_ce_0"] < 1e-6 and losses["loss_giou_0"] < 1e-4
    total = criterion.total(losses)
    summary = summarise(losses, criterion.weights)
    assert summary["total"] == pytest.approx(float(total), rel=1e-6)
    assert summary["dice"] == pytest.approx(
        5 * sum(float(losses[k]) for k in ("loss_dice", "loss_dice_0", "loss_dice_1")), rel=1e-6
    )


def test_criterion_rejects_bad_point_settings() -> None:
    with pytest.raises(ValueError):
        FocusCriterion(matcher=HungarianMatcher(), weights=LossWeights(), num_points=0)
    with pytest.raises(ValueError):
        HungarianMatcher(num_points=0)
