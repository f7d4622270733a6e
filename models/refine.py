"""Full-resolution refinement of a soft mask: edge-aware upsampling, foreground colour
decontamination, and the geometry of the zoom pass. Torch-free (numpy + OpenCV).

FOCUS sees an image at a short side of ``input_short_side`` (128 for the demo models, 512 for
the reference presets); the mask is resized back to the original size, which on a 12 MP photo
leaves an edge as blurry as one network pixel is wide. Three opt-in fixes, each measured by
``benchmarks/refinement.py`` (results in ``benchmarks/RESULTS.md``):

* ``guided_filter``: the colour guided filter of He, Sun & Tang ("Guided Image Filtering",
  TPAMI 2013), in its fast subsampled form (He & Sun, "Fast Guided Filter", 2015): the mask is
  locally an affine function of the full-resolution image's colour, so its edges snap to the
  image's edges. Radius and epsilon follow the resize factor (``guided_params``). OpenCV's
  ``ximgproc.guidedFilter`` is not in opencv-python-headless, so it is written here with
  ``cv2.boxFilter``.
* ``estimate_foreground``: "blur fusion" foreground estimation (Forte & Pitie, "Approximate
  Fast Foreground Colour Estimation", ICIP 2021): two passes of box-filtered foreground and
  background colour means; the composite of the result on a new background shows no fringe of
  the old one. Cheaper than pymatting's multilevel solver and without its numba dependency.
* ``plan_zoom`` / ``blend_zoom``: where the object is small relative to the image, the caller
  runs the network a second time on a crop around it (with margin) and blends the crop's mask
  in where the first pass is uncertain (BiRefNet's maintainers' advice: locate at low
  resolution, then re-run on the crop, rather than tiling). ``plan_tiles`` / ``stitch_tiles``
  give the native-resolution overlapping tiles tried for forgery and defocus.

``OFFERED`` says which option is offered for which task: only those that measured better.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.processing import resized_size

__all__ = [
    "OFFERED",
    "ZOOM_TASKS",
    "GuidedParams",
    "ZoomCrop",
    "guided_params",
    "guided_filter",
    "refine_guided",
    "estimate_foreground",
    "foreground_radius",
    "plan_zoom",
    "blend_zoom",
    "plan_tiles",
    "stitch_tiles",
    "refusal",
]

# Which option is offered for which task: those that measured better than a plain resize with
# the demo models in benchmarks/refinement.py (benchmarks/RESULTS.md, "Full-resolution
# refinement"). Everything else is refused with 422 and the reason ``refusal`` gives.
OFFERED: dict[str, frozenset[str]] = {
    "guided": frozenset({"salient", "shadow", "defocus"}),
    "decontaminate": frozenset({"salient", "camouflage", "shadow"}),
    "zoom": frozenset({"salient"}),
}
ZOOM_TASKS: frozenset[str] = frozenset({"salient", "camouflage"})  # objects to zoom on
MEASURED_WORSE: dict[str, str] = {
    "guided": "it did not raise the boundary F-measure (without lowering the S-measure) over "
    "a plain resize",
    "decontaminate": "it did not lower the colour error of composites",
    "zoom": "it did not raise the S-measure and lower the MAE",
}
# Where the general reason above would not be accurate.
SPECIFIC_REASONS: dict[tuple[str, str], str] = {
    ("guided", "camouflage"): "the measurements disagree (a higher boundary F-measure on the "
    "large-object image, a lower one on four small-object images) and the demo camouflage "
    "model is near chance (S-measure 0.41), so no gain is established",
    ("zoom", "camouflage"): "it never ran: the demo camouflage model's first-pass mask covers "
    "a large part of every image, so no crop is small enough to help",
}


def refusal(option: str, task: str) -> str | None:
    """Why ``option`` is not offered for ``task`` (None: it is offered)."""
    if task in OFFERED[option]:
        return None
    if (option, task) in SPECIFIC_REASONS:
        why = SPECIFIC_REASONS[(option, task)]
    elif option == "zoom" and task not in ZOOM_TASKS:
        why = (
            "the zoom pass is for salient and camouflaged objects; native-resolution tiles, "
            "tried for forgery and defocus instead, did not measure better than one pass"
        )
    else:
        why = f"{MEASURED_WORSE[option]} for this task with the demo models"
    offered = ", ".join(sorted(OFFERED[option])) or "no task"
    return (
        f"{option} is not offered for task {task!r}: {why} (benchmarks/refinement.py, see "
        f"benchmarks/RESULTS.md); offered for: {offered}"
    )


# ------------------------------------------------------------------------------ guided filter


@dataclass(frozen=True)
class GuidedParams:
    """Guided-filter settings at the original resolution."""

    radius: int  # window radius in original pixels
    eps: float  # regularisation on a 0..1 intensity scale (larger = smoother, less edge-snap)
    subsample: int  # the coefficients are computed at 1/subsample resolution


def guided_params(original: tuple[int, int], network: tuple[int, int]) -> GuidedParams:
    """Radius of about three network pixels at the original scale (the upsampled mask is
    blurred over about two; three measured best on the demo models, against one and two).
    The coefficients are smooth, so they are computed on a grid about half a network pixel
    apart, which keeps the cost nearly independent of the radius."""
    factor = max(original[0] / max(network[0], 1), original[1] / max(network[1], 1), 1.0)
    radius = max(2, int(round(3.0 * factor)))
    subsample = max(1, int(factor // 2))
    return GuidedParams(radius=radius, eps=1e-3, subsample=subsample)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True,
                         borderType=cv2.BORDER_REFLECT)  # fmt: skip


def guided_filter(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1
) -> np.ndarray:
    """Colour guided filter of ``src`` (float32 [H, W]) by ``guide`` (uint8 [H, W, 3]).

    Returns float32 [H, W] of the same size, clipped to [0, 1]: the filter is a local affine
    map of the guide, which can overshoot a little near strong edges.
    """
    if guide.ndim != 3 or guide.shape[2] != 3 or guide.shape[:2] != src.shape:
        raise ValueError(f"guide {guide.shape} must be HxWx3 with the mask's size {src.shape}")
    if radius < 1 or eps <= 0 or subsample < 1:
        raise ValueError(f"bad guided-filter parameters r={radius} eps={eps} s={subsample}")
    h, w = src.shape
    p = np.ascontiguousarray(src, np.float32)  # the postprocessed mask may be column-major
    # Full-resolution work goes one colour channel at a time: at 12 MP a float32 copy of the
    # whole image is 144 MB, one channel 48 MB.
    if subsample > 1:
        size = (max(1, w // subsample), max(1, h // subsample))
        image_s = np.dstack(
            [cv2.resize(_channel(guide, c), size, interpolation=cv2.INTER_AREA) for c in range(3)]
        )
        p_s = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
        r = max(1, radius // subsample)
    else:
        image_s, p_s, r = np.dstack([_channel(guide, c) for c in range(3)]), p, radius
    mean_i = _box(image_s, r)  # [h, w, 3]
    mean_p = _box(p_s, r)  # [h, w]
    cov_ip = _box(image_s * p_s[..., None], r) - mean_i * mean_p[..., None]
    # Covariance of the guide's colour in the window: the 6 distinct entries of a 3x3 matrix.
    ch = [image_s[..., k] for k in range(3)]
    mu = [mean_i[..., k] for k in range(3)]
    e = np.float32(eps)
    var = {
        (a, b): _box(ch[a] * ch[b], r) - mu[a] * mu[b] + (e if a == b else 0)
        for a in range(3)
        for b in range(a, 3)
    }
    rr, rg, rb, gg, gb, bb = (var[k] for k in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))
    # (Sigma + eps I)^-1 by cofactors, per pixel.
    inv_rr = gg * bb - gb * gb
    inv_rg = gb * rb - rg * bb
    inv_rb = rg * gb - gg * rb
    inv_gg = rr * bb - rb * rb
    inv_gb = rb * rg - rr * gb
    inv_bb = rr * gg - rg * rg
    det = rr * inv_rr + rg * inv_rg + rb * inv_rb
    c0, c1, c2 = (cov_ip[..., k] for k in range(3))
    a = np.stack(
        [
            inv_rr * c0 + inv_rg * c1 + inv_rb * c2,
            inv_rg * c0 + inv_gg * c1 + inv_gb * c2,
            inv_rb * c0 + inv_gb * c1 + inv_bb * c2,
        ],
        -1,
    ) / det[..., None]
    b = mean_p - (a * mean_i).sum(-1)
    mean_a = _box(a.astype(np.float32), r)
    mean_b = _box(b.astype(np.float32), r)

    def full(x: np.ndarray) -> np.ndarray:
        if subsample == 1:
            return np.ascontiguousarray(x)
        return np.asarray(cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)

    q = full(mean_b)  # q = mean_a . I + mean_b, accumulated channel by channel
    for c in range(3):
        q += full(mean_a[..., c]) * _channel(guide, c)
    out: np.ndarray = np.clip(q, 0.0, 1.0, out=q)
    return out


def _channel(guide: np.ndarray, c: int) -> np.ndarray:
    """Channel ``c`` of a uint8 image as float32 in [0, 1]."""
    return guide[..., c].astype(np.float32) * np.float32(1.0 / 255.0)


def refine_guided(
    rgb: np.ndarray, soft: np.ndarray, network: tuple[int, int]
) -> np.ndarray:
    """The soft mask snapped to ``rgb``'s edges; same size, values in [0, 1].

    ``network`` is the (h, w) the network saw, which sets the radius (``guided_params``).
    An image the network saw at its own size or larger is returned unchanged: there is no
    upsampling blur to undo.
    """
    original = (int(soft.shape[0]), int(soft.shape[1]))
    if original[0] <= network[0] and original[1] <= network[1]:
        return soft
    params = guided_params(original, network)
    return guided_filter(rgb, soft, params.radius, params.eps, params.subsample)


# ---------------------------------------------------------------------- foreground colours


def _resize(x: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``x`` at ``size`` (width, height); the same array when it already is."""
    if (x.shape[1], x.shape[0]) == size:
        return x
    return np.asarray(cv2.resize(x, size, interpolation=interpolation), np.float32)


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    return np.asarray(cv2.blur(x, (2 * r + 1, 2 * r + 1)), np.float32)


def _fuse(image: np.ndarray, mean_f: np.ndarray, mean_b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """F = mean_F + alpha (I - alpha mean_F - (1 - alpha) mean_B), clipped to [0, 1]."""
    out = image - a * mean_f - (1 - a) * mean_b
    out *= a
    out += mean_f
    fused: np.ndarray = np.clip(out, 0.0, 1.0, out=out)
    return fused


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray, edge_radius: int = 6) -> np.ndarray:
    """Foreground colours (uint8 [H, W, 3]) for compositing ``rgb`` with ``alpha`` elsewhere.

    Two blur-fusion passes (Forte & Pitie 2021): a wide one (an eighth of the short side) for
    the colours far from confident pixels, then one of ``edge_radius`` px for the soft band.
    Box-filtered means are smooth, so each pass computes them on a grid a sixteenth (wide) or
    a quarter (edge) of its radius apart and upsamples them; the full-resolution work is done
    one colour channel at a time (memory: a few float32 copies of one channel). Where alpha is
    1 the result is the image; colours stay in 0..255 by construction.
    """
    if rgb.shape[:2] != alpha.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image {rgb.shape} and alpha {alpha.shape} must be HxWx3 and HxW")
    h, w = alpha.shape
    a = np.clip(np.ascontiguousarray(alpha, np.float32), 0.0, 1.0)  # C order: 7x faster
    wide = max(edge_radius + 1, min(h, w) // 8)
    edge = max(1, edge_radius)
    step_wide, step_edge = max(1, wide // 16), max(1, edge // 4)
    size_wide = (max(1, w // step_wide), max(1, h // step_wide))
    size_edge = (max(1, w // step_edge), max(1, h // step_edge))
    r_wide, r_edge = max(1, wide // step_wide), max(1, edge // step_edge)
    a_wide = _resize(a, size_wide, cv2.INTER_AREA)
    a_edge = _resize(a, size_edge, cv2.INTER_AREA)
    blurred_a_wide = _blur(a_wide, r_wide)
    blurred_a_edge = _blur(a_edge, r_edge)
    full = (w, h)
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        image = rgb[..., c].astype(np.float32) * np.float32(1.0 / 255.0)
        # Pass 1 (wide): F = B = the image.
        small = _resize(image, size_wide, cv2.INTER_AREA)
        mean_f = _blur(small * a_wide, r_wide) / (blurred_a_wide + 1e-5)
        mean_b = _blur(small * (1 - a_wide), r_wide) / ((1 - blurred_a_wide) + 1e-5)
        mean_b = _resize(mean_b, full, cv2.INTER_LINEAR)
        fg = _fuse(image, _resize(mean_f, full, cv2.INTER_LINEAR), mean_b, a)
        # Pass 2 (edge): the foreground mean from pass 1's F. The paper re-blurs pass 1's
        # background mean at the small radius too, which leaves that smooth mean nearly
        # unchanged; it is reused as is.
        weighted = _resize(fg * a, size_edge, cv2.INTER_AREA)
        mean_f = _blur(weighted, r_edge) / (blurred_a_edge + 1e-5)
        fg = _fuse(image, _resize(mean_f, full, cv2.INTER_LINEAR), mean_b, a)
        fg *= 255.0
        fg += 0.5
        out[..., c] = np.clip(fg, 0, 255).astype(np.uint8)
    return out


def foreground_radius(original: tuple[int, int], network: tuple[int, int]) -> int:
    """The soft band of an upsampled mask is about one network pixel wide at the original
    scale; the edge pass must reach across it to confident foreground."""
    factor = max(original[0] / max(network[0], 1), original[1] / max(network[1], 1), 1.0)
    return max(3, int(round(2.0 * factor)))


# -------------------------------------------------------------------------------- zoom pass


@dataclass(frozen=True)
class ZoomCrop:
    """A crop (y0:y1, x0:x1) of the original image for the second pass."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def as_xywh(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.width, self.height)


def _object_box(fg: np.ndarray, keep: float) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) around the largest connected foreground component and every component
    at least ``keep`` times its area (specks of false positives do not widen the box)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    chosen = stats[1:][areas >= keep * areas.max()]
    x0 = int(chosen[:, cv2.CC_STAT_LEFT].min())
    y0 = int(chosen[:, cv2.CC_STAT_TOP].min())
    x1 = int((chosen[:, cv2.CC_STAT_LEFT] + chosen[:, cv2.CC_STAT_WIDTH]).max())
    y1 = int((chosen[:, cv2.CC_STAT_TOP] + chosen[:, cv2.CC_STAT_HEIGHT]).max())
    return y0, y1, x0, x1


def plan_zoom(
    soft: np.ndarray,
    short_side: int,
    max_size: int,
    *,
    threshold: float = 0.5,
    margin: float = 0.5,
    keep: float = 0.25,
    min_gain: float = 1.5,
) -> ZoomCrop | None:
    """The crop around the first pass's object, or None when a second pass cannot help.

    The box surrounds the main foreground components (``soft > threshold``; see
    ``_object_box``), grown by ``margin`` of its size on each side (context the network needs)
    and clipped to the image. It is used only when the network, resizing the crop as it
    resizes any image (``short_side``, ``max_size``), sees it at least ``min_gain`` times larger
    than in the first pass. No foreground means nothing to zoom on.
    """
    h, w = soft.shape
    box = _object_box(soft > threshold, keep)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    my = int(np.ceil(margin * (y1 - y0))) + 1
    mx = int(np.ceil(margin * (x1 - x0))) + 1
    crop = ZoomCrop(max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx))
    full_scale = resized_size(h, w, short_side, max_size)[0] / h
    crop_scale = resized_size(crop.height, crop.width, short_side, max_size)[0] / crop.height
    if crop_scale < min_gain * full_scale:
        return None
    return crop


def _uncertainty_weight(first: np.ndarray, band: int) -> np.ndarray:
    """1 where the first pass is unsure (p near 0.5) or within ``band`` px of such a place."""
    u = 1.0 - np.abs(2.0 * first - 1.0)  # 1 at p = 0.5, 0 at p in {0, 1}
    w: np.ndarray = np.clip(2.0 * u, 0.0, 1.0).astype(np.float32)
    if band > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
        w = np.asarray(cv2.dilate(w, kernel), np.float32)
        w = np.asarray(cv2.blur(w, (2 * band + 1, 2 * band + 1)), np.float32)
    return np.clip(w, 0.0, 1.0)


def blend_zoom(first: np.ndarray, crop_soft: np.ndarray, crop: ZoomCrop, band: int) -> np.ndarray:
    """The first pass's mask with the crop's mask blended in where the first pass is uncertain
    (within ``band`` px of its soft edge), fading out towards the crop border."""
    if crop_soft.shape != (crop.height, crop.width):
        raise ValueError(f"crop mask {crop_soft.shape} does not match {crop}")
    out = first.copy()
    region = first[crop.y0 : crop.y1, crop.x0 : crop.x1]
    weight = _uncertainty_weight(region, band)
    # Feather the crop border over `band` px so no seam appears where the crop ends.
    fy = np.minimum(np.arange(crop.height), np.arange(crop.height)[::-1]).astype(np.float32)
    fx = np.minimum(np.arange(crop.width), np.arange(crop.width)[::-1]).astype(np.float32)
    feather = np.clip(np.minimum(fy[:, None], fx[None, :]) / max(band, 1), 0.0, 1.0)
    weight *= feather
    out[crop.y0 : crop.y1, crop.x0 : crop.x1] = region + weight * (crop_soft - region)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------- native-resolution tiles


def plan_tiles(height: int, width: int, tile: int, overlap: float = 0.25) -> list[ZoomCrop]:
    """Overlapping ``tile`` x ``tile`` windows covering the image (the last ones flush with the
    border); a side shorter than ``tile`` is one window of its full length."""

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        stride = max(1, int(tile * (1.0 - overlap)))
        out = list(range(0, n - tile, stride))
        return [*out, n - tile]

    return [
        ZoomCrop(y, min(height, y + tile), x, min(width, x + tile))
        for y in starts(height)
        for x in starts(width)
    ]


def stitch_tiles(
    shape: tuple[int, int], tiles: list[ZoomCrop], masks: list[np.ndarray]
) -> np.ndarray:
    """Weighted mean of the tiles' masks: a tent weight, highest at each tile's centre."""
    acc = np.zeros(shape, np.float64)
    total = np.zeros(shape, np.float64)
    for crop, mask in zip(tiles, masks, strict=True):
        ty = 1.0 - np.abs(np.linspace(-1, 1, crop.height)) * 0.9
        tx = 1.0 - np.abs(np.linspace(-1, 1, crop.width)) * 0.9
        weight = ty[:, None] * tx[None, :]
        acc[crop.y0 : crop.y1, crop.x0 : crop.x1] += weight * mask
        total[crop.y0 : crop.y1, crop.x0 : crop.x1] += weight
    out: np.ndarray = np.clip(acc / np.maximum(total, 1e-12), 0.0, 1.0).astype(np.float32)
    return out
