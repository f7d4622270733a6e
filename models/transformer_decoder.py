"""Masked-attention transformer decoder with two queries (foreground, background).

Mask2Former's decoder: learnable query features and positions; each layer does masked
cross-attention to one pixel-decoder level (s32, s16, s8 in turn) -> self-attention -> FFN, all
post-norm. Before the first layer and after every layer, shared heads predict class logits
(fg, bg, no-object), mask logits (query embedding . mask features) and, in training, boxes; the
mask of one prediction masks the next layer's cross-attention (sigmoid < 0.5; a fully masked row
is unmasked). Names follow the reference ``MultiScaleMaskedTransformerDecoder``.

Training-mode quirk kept from the reference (OFFICIAL_TRAINING §5): layer 0's cross-attention is
unmasked during training (its PCA mask is a no-op), masked by the learnable-query prediction at
inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import MLP
from models.position import sine_position_encoding

if TYPE_CHECKING:
    from models.clip import ClipRefiner


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, value=tgt, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, tgt: Tensor, memory: Tensor, mask: Tensor | None, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        out = self.multihead_attn(
            query=tgt + query_pos,
            key=memory + pos,
            value=memory,
            attn_mask=mask,
            need_weights=False,
        )[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MaskedTransformerDecoder(nn.Module):
    """Args:
    hidden_dim, num_queries, nheads, dim_feedforward, dec_layers: the decoder.
    mask_dim: width of the pixel decoder's mask features.
    num_classes: object classes (2: fg, bg); logits have one more (no-object).
    clip_refiner, text_embed, image_embed: training-only CLIP distillation modules (or None).
    """

    num_levels = 3

    def __init__(
        self,
        *,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        mask_dim: int,
        num_classes: int,
        clip_refiner: ClipRefiner | None = None,
        text_embed: nn.Module | None = None,
        image_embed: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.clip_refiner = clip_refiner
        self.text_embed = text_embed
        self.image_embed = image_embed

    def _heads(
        self, output: Tensor, mask_features: Tensor, target_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """output [Q, B, C] -> decoder features [B, Q, C], class logits, mask logits, attn mask."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output)  # [B, Q, K+1]
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn = F.interpolate(outputs_mask, size=target_size, mode="bilinear", align_corners=False)
        # [B, Q, h, w] -> [B*heads, Q, h*w]; True = not allowed to attend.
        attn = (
            attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
            < 0.5
        )
        attn = attn & ~attn.all(-1, keepdim=True)  # a fully masked row attends everywhere
        return decoder_output, outputs_class, outputs_mask, attn.detach()

    def _clip_features(
        self,
        decoder_output: Tensor,
        outputs_class: Tensor,
        outputs_mask: Tensor,
        images: Tensor,
        clip_text: Tensor,
    ) -> dict[str, Tensor]:
        """Region features of each query's mask and the text features of its predicted class."""
        assert self.clip_refiner is not None and self.text_embed is not None
        assert self.image_embed is not None  # forward() calls this only with CLIP modules
        size = self.clip_refiner.image_size
        masks = torch.sigmoid(
            F.interpolate(outputs_mask, size=(size, size), mode="bilinear", align_corners=False)
            * 10
        )
        regions = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        image_features = self.clip_refiner.encode_regions(regions, masks)  # [B, Q, E]
        text_features = clip_text[outputs_class.argmax(-1)]  # [B, Q, E]
        return {
            "image_features": self.image_embed(image_features),
            "text_features": self.text_embed(text_features),
        }

    def forward(
        self,
        features: list[Tensor],
        mask_features: Tensor,
        images: Tensor | None = None,
        clip_text: Tensor | None = None,
    ) -> dict:
        """features: [s32, s16, s8] maps; mask_features: [B, mask_dim, H/4, W/4].

        Eval: {"pred_logits": [B, Q, 3], "pred_masks": [B, Q, H/4, W/4]}.
        Train: also "pred_boxes" [B, Q, 4] (raw), "aux_outputs" (one dict per earlier head) and,
        with ``clip_text`` [3, E] (fg, bg, no-object prompts), "pred_queries".
        """
        sizes, srcs, pos = [], [], []
        for i, x in enumerate(features):
            sizes.append((x.shape[-2], x.shape[-1]))
            pos.append(
                sine_position_encoding(x, x.shape[1] // 2).flatten(2).permute(2, 0, 1)
            )  # [HW, B, C]
            srcs.append((x.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
        b = srcs[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)  # [Q, B, C]
        output = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)

        use_clip = self.training and clip_text is not None and self.clip_refiner is not None
        predictions = []
        dec_out, cls, masks, attn = self._heads(output, mask_features, sizes[0])
        if self.training:
            attn = torch.zeros_like(attn)  # reference quirk: layer 0 unmasked in training
        predictions.append((dec_out, cls, masks))
        for i in range(self.num_layers):
            level = i % self.num_levels
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], attn, pos[level], query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            dec_out, cls, masks, attn = self._heads(
                output, mask_features, sizes[(i + 1) % self.num_levels]
            )
            predictions.append((dec_out, cls, masks))

        if not self.training:
            return {"pred_logits": predictions[-1][1], "pred_masks": predictions[-1][2]}

        outs = []
        for dec_out, cls, masks in predictions:
            out = {"pred_logits": cls, "pred_masks": masks, "pred_boxes": self.bbox_embed(dec_out)}
            if use_clip:
                assert images is not None and clip_text is not None  # use_clip checked clip_text
                out["pred_queries"] = self._clip_features(dec_out, cls, masks, images, clip_text)
            outs.append(out)
        result = dict(outs[-1])
        result["aux_outputs"] = outs[:-1]
        return result
