"""Torch-free pre/post-processing against the reference path computed with torch ops."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import processing as P


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (512, 683)),
        ((512, 512), (512, 512)),
        ((100, 1000), (205, 2048)),
        ((4000, 300), (2048, 154)),
    ],
)
def test_resized_size_follows_the_reference_rounding(hw, expected):
    assert P.resized_size(*hw, 512, 2048) == expected


def test_normalise_pad_and_edge_map_match_the_reference_torch_ops():
    rgb = _rgb(120, 200)
    prepared = P.preprocess(rgb, short_side=128, max_size=1024)
    resized = P.resize_image(rgb, 128, 1024)
    # reference: torch float32 normalisation then zero padding to 32
    x = torch.from_numpy(resized.astype(np.float32).transpose(2, 0, 1))
    x = (x - torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)) / torch.tensor(
        [58.395, 57.12, 57.375]
    ).view(3, 1, 1)
    padded = torch.zeros(3, 128, 224)
    padded[:, : x.shape[1], : x.shape[2]] = x
    assert prepared.padded_size == (128, 224) and prepared.resized_size == (128, 213)
    np.testing.assert_array_equal(prepared.image, padded.numpy())
    # reference _inject_edges on the normalised padded tensor
    u8 = padded.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    img = cv2.GaussianBlur(cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), (5, 5), 1.4)
    edges = np.stack([cv2.Canny(img[:, :, c], 100, 200) for c in range(3)], -1)
    ref = torch.from_numpy(
        (cv2.addWeighted(img, 0.7, edges, 0.3, 0) / 255.0).transpose(2, 0, 1).copy()
    ).float()
    np.testing.assert_array_equal(prepared.edges, ref.numpy())


@pytest.mark.parametrize("original", [(480, 640), (333, 517), (1000, 300), (64, 2000)])
def test_soft_mask_matches_torch_interpolation_path(original):
    rng = np.random.default_rng(1)
    p = P.preprocess(_rgb(*original))
    hp, wp = p.padded_size
    logits = (rng.normal(size=(2, hp // 4, wp // 4)) * 4).astype(np.float32)
    probs = rng.dirichlet([1, 1, 1], size=2)[:, :2].astype(np.float32)
    soft, _ = P.postprocess(probs, logits, p.padded_size, p.resized_size, p.original_size)
    m = F.interpolate(
        torch.from_numpy(logits)[None], size=(hp, wp), mode="bilinear", align_corners=False
    )[0]
    m = m[:, : p.resized_size[0], : p.resized_size[1]]
    m = F.interpolate(m[None], size=original, mode="bilinear", align_corners=False)[0]
    ref = torch.einsum("q,qhw->hw", torch.from_numpy(probs[:, 0]), m.sigmoid()).numpy()
    assert soft.shape == original
    assert np.abs(soft - ref).max() < 1e-6


def _masks(fg_query_mask):
    """mask probabilities for two queries: q0 = given mask, q1 = its complement."""
    m0 = np.where(fg_query_mask, 0.9, 0.1).astype(np.float32)
    return np.stack([m0, 1 - m0])


def test_binary_mask_two_confident_queries_compares_their_masks():
    region = np.zeros((8, 8), bool)
    region[2:5, 2:6] = True
    probs = np.array([[0.95, 0.02], [0.03, 0.9]], np.float32)  # q0 fg, q1 bg
    np.testing.assert_array_equal(P.binary_mask(probs, _masks(region)), region)
    # the classes swap queries: the fg mask is now query 1's
    swapped = np.array([[0.02, 0.95], [0.9, 0.03]], np.float32)
    np.testing.assert_array_equal(P.binary_mask(swapped, _masks(region)), ~region)


def test_binary_mask_single_confident_background_entry_inverts_its_mask():
    region = np.zeros((8, 8), bool)
    region[:4] = True
    probs = np.array([[0.3, 0.3], [0.05, 0.9]], np.float32)  # only (q1, bg) passes 0.5
    masks = _masks(region)  # q1 is high outside the region
    np.testing.assert_array_equal(P.binary_mask(probs, masks), masks[1] < 0.5)
    np.testing.assert_array_equal(P.binary_mask(probs, masks), region)


def test_binary_mask_same_class_twice_falls_back_to_the_best_entry():
    region = np.zeros((6, 6), bool)
    region[1:3] = True
    # both queries say fg above 0.5 after weighting (0.95 * 0.75, 0.6 * 0.86): only the best counts
    probs = np.array([[0.95, 0.02], [0.6, 0.1]], np.float32)
    masks = _masks(region)
    np.testing.assert_array_equal(P.binary_mask(probs, masks), masks[0] > 0.5)


def test_preprocess_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        P.preprocess(np.zeros((10, 10), np.uint8))


@pytest.mark.parametrize(("h", "w"), [(100, 40000), (40000, 100), (50, 5000)])
def test_extreme_aspect_ratios_pad_to_the_smallest_exported_side(h: int, w: int) -> None:
    """Every padded input lies in the range the ONNX graph and TensorRT profiles accept."""
    from models.contract import check_padded_shape

    rgb = np.zeros((h, w, 3), np.uint8)
    prepared = P.preprocess(rgb, short_side=256, max_size=1024)
    check_padded_shape(*prepared.padded_size)
    rh, rw = prepared.resized_size
    assert min(rh, rw) < 33  # the case that used to pad to 32
    assert prepared.image.shape == (3, *prepared.padded_size)
    assert np.all(prepared.image[:, rh:, :] == 0) and np.all(prepared.image[:, :, rw:] == 0)
    soft, binary = P.postprocess(
        np.array([[0.9, 0.05], [0.05, 0.9]], np.float32),
        np.zeros((2, prepared.padded_size[0] // 4, prepared.padded_size[1] // 4), np.float32),
        prepared.padded_size,
        prepared.resized_size,
        prepared.original_size,
    )
    assert soft.shape == binary.shape == (h, w)
