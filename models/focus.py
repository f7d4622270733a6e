"""FOCUS: the whole network, image + edge map in, class probabilities + mask logits out.

    image, edges ─► backbone (DINOv2 + edge prior + ViT-Adapter) ─► res2..res5
                 ─► sem_seg_head.pixel_decoder ─► mask features (s4), [s32, s16, s8]
                 ─► sem_seg_head.predictor (2-query masked-attention decoder) ─► logits, masks

Submodule names are the reference's (``backbone``, ``sem_seg_head.pixel_decoder``,
``sem_seg_head.predictor``) so released checkpoints load by name. Inputs are already normalised,
padded and edge-mapped by ``models.processing``; the outputs follow the ONNX contract of DESIGN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class FocusHead(nn.Module):
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class Focus(nn.Module):
    """Args:
    backbone: ``models.backbone.FocusBackbone``.
    sem_seg_head: ``FocusHead`` (pixel decoder + transformer decoder).
    """

    def __init__(self, *, backbone: nn.Module, sem_seg_head: FocusHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head

    def forward(
        self, image: Tensor, edges: Tensor, clip_text: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | dict[str, Any]:
        """image, edges: [B, 3, H, W] (H, W multiples of 32).

        Eval: (class_probs [B, Q, 2] = softmax without the no-object column,
               mask_logits [B, Q, H/4, W/4]).
        Train: the decoder's dict (pred_logits, pred_masks, pred_boxes, aux_outputs and, with
               ``clip_text``, pred_queries) for ``training.losses``.
        """
        features = self.backbone(image, edges)
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder(features)
        out = self.sem_seg_head.predictor(multi_scale, mask_features, image, clip_text)
        if self.training:
            return out
        class_probs = torch.softmax(out["pred_logits"], dim=-1)[..., :-1]
        return class_probs, out["pred_masks"]
