"""The one deformable-attention implementation against a slow, obviously-correct loop."""

import math

import torch

from models.msda import MSDeformAttn, ms_deform_attn_core, reference_points


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img [D, H, W]; (x, y) normalised in [0, 1] with align_corners=False semantics."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=torch.float64)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx].double()
    return out


def _slow_core(value, shapes, locations, weights):
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl] : starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(points):
                        x, y = locations[b, q, head, lvl, p].tolist()
                        out[b, q, head] += weights[
                            b, q, head, lvl, p
                        ].double() * _bilinear_zero_pad(img, x, y)
    return out.reshape(n, lq, m * d)


def test_core_matches_slow_loop_including_out_of_range_points():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4), (2, 2)]
    n, m, d, lq, points = 2, 2, 3, 6, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g)
    # locations spill outside [0, 1] so zero padding is exercised
    locations = torch.rand(n, lq, m, len(shapes), points, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, len(shapes), points, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    fast = ms_deform_attn_core(value, shapes, locations, weights)
    slow = _slow_core(value, shapes, locations, weights)
    assert torch.allclose(fast.double(), slow, atol=1e-5), (fast.double() - slow).abs().max()


def test_module_with_zero_offsets_samples_reference_points():
    """Zero offsets and one point: each query reads the value at its own cell centre."""
    attn = MSDeformAttn(d_model=4, n_levels=1, n_heads=1, n_points=1)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
        attn.value_proj.weight.copy_(torch.eye(4))
        attn.value_proj.bias.zero_()
        attn.output_proj.weight.copy_(torch.eye(4))
        attn.output_proj.bias.zero_()
    shapes = [(3, 5)]
    value = torch.randn(1, 15, 4)
    query = torch.randn(1, 15, 4)
    out = attn(query, reference_points(shapes, torch.device("cpu")), value, shapes)
    assert torch.allclose(out, value, atol=1e-6)


def test_value_ratio_narrows_the_value_projection():
    attn = MSDeformAttn(d_model=64, n_levels=3, n_heads=4, n_points=4, ratio=0.5)
    assert attn.value_proj.weight.shape == (32, 64)
    assert attn.output_proj.weight.shape == (64, 32)
    shapes = [(4, 4), (2, 2), (1, 1)]
    out = attn(
        torch.randn(2, 9, 64),
        reference_points([(3, 3)], torch.device("cpu")),
        torch.randn(2, 21, 64),
        shapes,
    )
    assert out.shape == (2, 9, 64)
