"""The FOCUS backbone: DINOv2 ViT + edge prior module + ViT-Adapter interactions.

Data flow (strides relative to the padded input, H and W multiples of 32):

    edges ─► EdgePriorModule ─► c1 (s4 map), c2/c3/c4 (s8/s16/s32 tokens) + level_embed ─► c
    image ─► patch_embed (s14) + pos_embed (37x37 grid, bicubic to the token grid) ─► x, cls
    for each interaction block: x ← injector(x, c); x ← ViT blocks; c ← extractor(s)(c, x)
    res2..res5 = BatchNorm(c1 + up(c2) | c2 | c3 | c4  +  bilinear(ViT tokens after block k))

The reference computes the edge map inside the backbone with OpenCV on the CPU; here it is an
input (``models.processing.edge_map``), which keeps the network exportable and the edge map
shared by every backend. The reference's PCA token mask (training only) has no effect
(OFFICIAL_TRAINING §5) and is not computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.msda import reference_points


class FocusBackbone(nn.Module):
    """DINOv2 ViT + edge prior + ViT-Adapter interactions, composed from built parts
    (``models.build`` makes them from a config, as segment-anything's builder does).

    Args:
        patch_embed: the ViT's patch embedding (stride ``patch_size``).
        blocks: the ViT blocks, in order.
        edge: the edge prior module (edge map -> c1 map and c2..c4 tokens).
        interactions: one adapter interaction block per ``interaction_indexes`` entry.
        interaction_indexes: (first, last) ViT block run by each interaction block.
        embed_dim: the ViT width (of the position embedding, level embedding and output norms).
        pos_grid: side of the pretrained position-embedding grid (37 for DINOv2 at 518).
    The position embedding, class token, level embedding, the c2 up-sampling and the four output
    norms are owned here: they belong to no single part.
    """

    def __init__(
        self,
        *,
        patch_embed: nn.Module,
        blocks: nn.Sequential,
        edge: nn.Module,
        interactions: nn.Sequential,
        interaction_indexes: tuple[tuple[int, int], ...],
        embed_dim: int,
        pos_grid: int,
    ) -> None:
        super().__init__()
        if len(interactions) != len(interaction_indexes):
            raise ValueError(
                f"{len(interactions)} interaction blocks for {len(interaction_indexes)} indexes"
            )
        self.pos_grid = pos_grid
        self.interaction_indexes = interaction_indexes
        self.patch_embed = patch_embed
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = blocks
        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.edge = edge
        self.interactions = interactions
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        self.norm1 = nn.BatchNorm2d(embed_dim)
        self.norm2 = nn.BatchNorm2d(embed_dim)
        self.norm3 = nn.BatchNorm2d(embed_dim)
        self.norm4 = nn.BatchNorm2d(embed_dim)
        nn.init.normal_(self.level_embed)

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """[1, 1 + h*w, D]: CLS position + the 37x37 grid resized bicubic to the token grid."""
        g = self.pos_grid
        grid = self.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat((self.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)), dim=1)

    def forward(self, image: Tensor, edges: Tensor) -> dict[str, Tensor]:
        """image, edges: [B, 3, H, W] -> {"res2".."res5": [B, D, H/4 .. H/32, W/4 .. W/32]}."""
        b, _, height, width = image.shape
        c_shapes = [
            (height // 8, width // 8),
            (height // 16, width // 16),
            (height // 32, width // 32),
        ]

        c1, c2, c3, c4 = self.edge(edges)
        c = torch.cat(
            [c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], 1
        )

        x, h, w = self.patch_embed(image)  # [B, h*w, D]
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1) + self._pos_embed(h, w)
        cls, x = tokens[:, :1], tokens[:, 1:]

        x_ref = reference_points([(h, w)], image.device)  # ViT token centres, queries of injectors
        c_ref = reference_points(c_shapes, image.device)  # c token centres, queries of extractors
        outs = []
        for (first, last), layer in zip(self.interaction_indexes, self.interactions, strict=True):
            x, c, cls = layer(
                x, c, cls, self.blocks[first : last + 1], x_ref, c_ref, (h, w), c_shapes
            )
            outs.append(x.transpose(1, 2).reshape(b, -1, h, w))

        n2, n3 = c_shapes[0][0] * c_shapes[0][1], c_shapes[1][0] * c_shapes[1][1]
        c2, c3, c4 = c[:, :n2], c[:, n2 : n2 + n3], c[:, n2 + n3 :]
        c2 = c2.transpose(1, 2).reshape(b, -1, *c_shapes[0])
        c3 = c3.transpose(1, 2).reshape(b, -1, *c_shapes[1])
        c4 = c4.transpose(1, 2).reshape(b, -1, *c_shapes[2])
        c1 = self.up(c2) + c1

        sizes = [(height // 4, width // 4), *c_shapes]
        feats = [
            norm(ci + F.interpolate(xi, size=size, mode="bilinear", align_corners=False))
            for norm, ci, xi, size in zip(
                (self.norm1, self.norm2, self.norm3, self.norm4),
                (c1, c2, c3, c4),
                outs,
                sizes,
                strict=True,
            )
        ]
        return {f"res{i + 2}": f for i, f in enumerate(feats)}
