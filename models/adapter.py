"""ViT-Adapter interaction modules: the injector, the extractor and the conv-FFN.

The injector lets ViT patch tokens attend (deformable, 3 levels) to the spatial-prior tokens c
and adds the result scaled by a learnable ``gamma`` (initialised 0). The extractor lets c attend
(1 level) to the ViT tokens, then applies a depthwise-conv FFN per scale. Every interaction block
runs its injector, its slice of ViT blocks and its extractor(s); the last one has two extra
extractors. Reference: Chen et al., "Vision Transformer Adapter for Dense Predictions" (ICLR 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.layers import DropPath
from models.msda import MSDeformAttn, Shapes


class DWConv(nn.Module):
    """3x3 depthwise conv applied separately to the s8, s16 and s32 parts of the c tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, c_shapes: Shapes) -> Tensor:
        b, _, c = x.shape
        parts = x.split([h * w for h, w in c_shapes], dim=1)
        out = [
            self.dwconv(p.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            for p, (h, w) in zip(parts, c_shapes, strict=True)
        ]
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, c_shapes: Shapes) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), c_shapes)))


class Injector(nn.Module):
    """x += gamma * MSDeformAttn(norm(x), c): spatial priors into the ViT tokens."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(
            dim, n_levels=3, n_heads=num_heads, n_points=n_points, ratio=deform_ratio
        )
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, ref: Tensor, c: Tensor, c_shapes: Shapes) -> Tensor:
        attn = self.attn(self.query_norm(x), ref, self.feat_norm(c), c_shapes)
        return x + self.gamma * attn


class Extractor(nn.Module):
    """c += MSDeformAttn(norm(c), x); c += DropPath(ConvFFN(norm(c))): ViT features into c."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        deform_ratio: float,
        cffn_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(
            dim, n_levels=1, n_heads=num_heads, n_points=n_points, ratio=deform_ratio
        )
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path)

    def forward(
        self, c: Tensor, ref: Tensor, x: Tensor, x_shape: tuple[int, int], c_shapes: Shapes
    ) -> Tensor:
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), [x_shape])
        return c + self.drop_path(self.ffn(self.ffn_norm(c), c_shapes))


class InteractionBlock(nn.Module):
    """Injector -> ViT blocks [start, end] (with the CLS token) -> extractor(s)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        deform_ratio: float,
        cffn_ratio: float,
        drop_path: float,
        extra_extractor: bool,
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, deform_ratio)
        self.extractor = Extractor(dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path)
        self.extra_extractors = (
            nn.Sequential(
                *(
                    Extractor(dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path)
                    for _ in range(2)
                )
            )
            if extra_extractor
            else None
        )

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        cls: Tensor,
        blocks: nn.Module,
        x_ref: Tensor,
        c_ref: Tensor,
        x_shape: tuple[int, int],
        c_shapes: Shapes,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, h*w, D] patch tokens; c: [B, sum(c levels), D]; cls: [B, 1, D]."""
        x = self.injector(x, x_ref, c, c_shapes)
        x = blocks(torch.cat([cls, x], dim=1))
        cls, x = x[:, :1], x[:, 1:]
        c = self.extractor(c, c_ref, x, x_shape, c_shapes)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(c, c_ref, x, x_shape, c_shapes)
        return x, c, cls
