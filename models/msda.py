"""Multi-scale deformable attention (Deformable DETR), pure PyTorch.

One implementation serves both the ViT-Adapter injector/extractor and the Mask2Former pixel
decoder. The sampling is bilinear ``grid_sample`` with zeros padding and
``align_corners=False``: the reference's own fallback path when its CUDA op is absent, the
function its checkpoints compute, and an op that exports to ONNX ``GridSample`` and builds in
TensorRT.

Reference: Zhu et al., "Deformable DETR" (2021); fundamentalvision/Deformable-DETR
``ms_deform_attn_core_pytorch``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shapes = list[tuple[int, int]]


def ms_deform_attn_core(
    value: Tensor, shapes: Shapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Sample each level at the given locations and sum with the attention weights.

    Args:
        value: [N, S, M, D] values of all levels concatenated (S = sum of H_l * W_l).
        shapes: per level (H_l, W_l), in the order of ``value``.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) in [0, 1], (0, 0) the top-left corner.
        attention_weights: [N, Lq, M, L, P], softmax-normalised over L * P.

    Returns:
        [N, Lq, M * D]
    """
    grids = [_level_grid(sampling_locations[:, :, :, level]) for level in range(len(shapes))]
    return sample_levels(value, shapes, grids, attention_weights)


def _level_grid(locations: Tensor) -> Tensor:
    """[N, Lq, M, P, 2] locations in [0, 1] -> [N*M, P, Lq, 2] grid_sample grid in [-1, 1]."""
    return (2 * locations - 1).permute(0, 2, 3, 1, 4).flatten(0, 1)


def sample_levels(value: Tensor, shapes: Shapes, grids: list[Tensor], weights: Tensor) -> Tensor:
    """The sampling and the weighted sum of :func:`ms_deform_attn_core`, one level at a time.

    The same function as the reference's ``ms_deform_attn_core_pytorch`` up to float rounding
    of the sum, laid out for the exported graph: each level's samples come out as
    [N*M, D, P, Lq] (points on a middle axis, so the weighted sum over them is a strided
    reduction over whole rows rather than a 4-wide innermost one) and are reduced and added
    level by level, instead of stacking every level's samples into one [N*M, D, Lq, L*P]
    tensor first (that stack was as costly as the sampling in ONNX Runtime and OpenVINO).

    Args:
        value: [N, S, M, D].
        shapes: per level (H_l, W_l).
        grids: per level [N*M, P, Lq, 2] in [-1, 1] (:func:`_level_grid`).
        weights: [N, Lq, M, L, P].
    """
    n, _, m, d = value.shape
    lq = weights.shape[1]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    # [N, Lq, M, L, P] -> [N*M, L, 1, P, Lq]
    weights = weights.permute(0, 2, 3, 4, 1).flatten(0, 1).unsqueeze(2)
    out: Tensor | None = None
    for level, (h, w) in enumerate(shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N*M, D, P, Lq]
        sampled = F.grid_sample(
            value_l, grids[level], mode="bilinear", padding_mode="zeros", align_corners=False
        )
        part = (sampled * weights[:, level]).sum(2)  # [N*M, D, Lq]
        out = part if out is None else out + part
    assert out is not None  # at least one level
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def reference_points(shapes: Shapes, device: torch.device) -> Tensor:
    """[1, sum(H*W), 1, 2] normalised (x, y) centres of every cell of every level."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    return torch.cat(points, 0)[None, :, None]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with an optional narrower value projection.

    Args:
        d_model: query / output width.
        n_levels: number of value levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
        ratio: value width = d_model * ratio (the ViT-Adapter's ``deform_ratio``).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        ratio: float = 1.0,
    ) -> None:
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim % n_heads:
            raise ValueError(f"value width {value_dim} is not divisible by {n_heads} heads")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model,
            n_levels,
            n_heads,
            n_points,
        )
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a ring of directions, uniform attention."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self, query: Tensor, ref_points: Tensor, value_in: Tensor, shapes: Shapes
    ) -> Tensor:
        """
        Args:
            query: [N, Lq, C]
            ref_points: [N or 1, Lq, L or 1, 2] normalised (x, y) reference points.
            value_in: [N, S, C] flattened levels.
            shapes: per level (H_l, W_l).

        Returns:
            [N, Lq, C]
        """
        n, lq, _ = query.shape
        s = value_in.shape[1]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(n, s, heads, self.value_dim // heads)
        offsets = self.sampling_offsets(query).view(n, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, lq, heads, levels * points)
        weights = F.softmax(weights, -1).view(n, lq, heads, levels, points)
        # Offsets are in cells of each level: divide x by W_l and y by H_l. Done per level with
        # Python-int (or symbolic) sizes so the exported graph keeps them dynamic; each level's
        # grid goes straight to the sampling (no [N, Lq, M, L, P, 2] stack in between).
        grids = []
        for level, (h, w) in enumerate(shapes):
            ref = ref_points[:, :, None, min(level, ref_points.shape[2] - 1), None, :]
            off = offsets[:, :, :, level]
            loc = torch.stack((ref[..., 0] + off[..., 0] / w, ref[..., 1] + off[..., 1] / h), -1)
            grids.append(_level_grid(loc))  # [N*M, P, Lq, 2]
        out = sample_levels(value, shapes, grids, weights)
        return self.output_proj(out)
