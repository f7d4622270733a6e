"""Mask2Former multi-scale deformable-attention pixel decoder.

res3..res5 are projected to ``conv_dim`` and refined jointly by a deformable-attention encoder
(post-norm layers); an FPN step adds res2 to give the stride-4 map from which mask features are
made. Reference: Cheng et al., "Masked-attention Mask Transformer" (CVPR 2022),
``MSDeformAttnPixelDecoder``; names follow it (``input_proj``, ``transformer.encoder.layers``,
``adapter_1``, ``layer_1``, ``mask_features``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.msda import MSDeformAttn, reference_points
from models.position import sine_position_encoding


class EncoderLayer(nn.Module):
    def __init__(
        self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: Tensor, pos: Tensor, ref: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        src = self.norm1(src + self.self_attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class EncoderOnly(nn.Module):
    """Holds ``level_embed`` and ``encoder.layers`` under the reference's names."""

    def __init__(
        self, d_model: int, d_ffn: int, num_layers: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            [EncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)]
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """srcs: coarse-to-fine [B, C, H_l, W_l] -> memory [B, sum(H_l*W_l), C] and shapes."""
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat(
            [
                sine_position_encoding(s, s.shape[1] // 2).flatten(2).transpose(1, 2)
                + self.level_embed[i].view(1, 1, -1)
                for i, s in enumerate(srcs)
            ],
            1,
        )
        ref = reference_points(shapes, flat.device)
        out = flat
        for layer in self.encoder.layers:
            out = layer(out, pos, ref, shapes)
        return out, shapes


class ConvNorm(nn.Module):
    """detectron2-style ``Conv2d`` with a ``.norm`` submodule and optional ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.norm = nn.GroupNorm(groups, c_out)
        self.padding = kernel // 2
        self.relu = relu
        nn.init.kaiming_uniform_(self.weight, a=1)  # c2_xavier_fill

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(F.conv2d(x, self.weight, None, 1, self.padding))
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    """Args:
    in_dim: backbone width (res2..res5 all have it).
    conv_dim, mask_dim: decoder and mask-feature widths.
    enc_layers, enc_heads, enc_points, enc_ffn_dim: the deformable encoder.
    norm_groups: GroupNorm groups.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        conv_dim: int,
        mask_dim: int,
        enc_layers: int,
        enc_heads: int,
        enc_points: int,
        enc_ffn_dim: int,
        norm_groups: int,
    ) -> None:
        super().__init__()
        # input_proj.0/1/2 act on res5, res4, res3 (coarse to fine), as in the reference.
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_dim, conv_dim, kernel_size=1), nn.GroupNorm(norm_groups, conv_dim)
            )
            for _ in range(3)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.get_parameter("0.weight"), gain=1)
            nn.init.constant_(proj.get_parameter("0.bias"), 0)
        self.transformer = EncoderOnly(conv_dim, enc_ffn_dim, enc_layers, 3, enc_heads, enc_points)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.get_parameter("bias"), 0)
        self.adapter_1 = ConvNorm(in_dim, conv_dim, 1, norm_groups, relu=False)
        self.layer_1 = ConvNorm(conv_dim, conv_dim, 3, norm_groups, relu=True)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """-> mask features [B, mask_dim, H/4, W/4], multi-scale features [s32, s16, s8]."""
        srcs = [
            proj(features[name].float())
            for proj, name in zip(self.input_proj, ("res5", "res4", "res3"), strict=True)
        ]
        memory, shapes = self.transformer(srcs)
        b = memory.shape[0]
        levels = memory.split([h * w for h, w in shapes], dim=1)
        multi_scale = [
            z.transpose(1, 2).reshape(b, -1, h, w) for z, (h, w) in zip(levels, shapes, strict=True)
        ]
        lateral = self.adapter_1(features["res2"].float())
        fine = self.layer_1(
            lateral
            + F.interpolate(
                multi_scale[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
        )
        return self.mask_features(fine), multi_scale
