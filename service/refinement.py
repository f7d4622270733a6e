"""The opt-in full-resolution options of ``/segment`` and ``focus segment``: which are valid
for a task and format, the zoom pass's second network input, and applying them to a mask.

The maths lives in ``models.refine`` (torch-free, shared with ``benchmarks/refinement.py``);
this module is the glue the route and the CLI share:

1. ``check_options`` refuses what is not offered (an option that did not measure better for
   the task, decontamination without a cut-out, JPEG for anything but an overlay) with a
   message saying why: the route answers 422, the CLI exits 2;
2. after the first pass, ``plan_zoom_pass`` says whether a second pass on a crop is needed and
   prepares its input; the caller runs the network on it as on any image;
3. ``refine_result`` blends the crop's mask in and runs the guided filter; the cut-out's colour
   decontamination happens in ``service.pipeline.encode``.

The options themselves are fields of ``service.pipeline.SegmentOptions``, and the chain that
runs these steps is ``service.pipeline`` (``segment_bytes``, ``refine_on_backend``): this module
only reads the image types at run time, so the chain can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from models.config import ModelCard
from models.processing import Prepared, postprocess, preprocess_with_card
from models.refine import ZoomCrop, blend_zoom, foreground_radius, plan_zoom, refine_guided, refusal
from service.schemas import BoundingBox, NetworkInput, RefinementInfo, ZoomInfo

if TYPE_CHECKING:  # annotations only: service.pipeline imports this module
    from service.pipeline import PreparedImage, SegmentOptions

RefineMode = Literal["none", "guided"]
ZoomMode = Literal["off", "auto"]
REFINE_MODES: tuple[str, ...] = get_args(RefineMode)
ZOOM_MODES: tuple[str, ...] = get_args(ZoomMode)

# The encodings each output format can be written in (the first is the default).
FORMAT_ENCODINGS: dict[str, tuple[str, ...]] = {
    "png": ("png", "webp"),
    "webp": ("webp",),
    "rgba": ("png", "webp"),
    "overlay": ("png", "webp", "jpeg"),
    "json": ("png",),
}


class OptionError(ValueError):
    """An option that is not offered for this task or format (422 / exit status 2)."""


def check_options(task: str, options: SegmentOptions) -> SegmentOptions:
    """``options`` with the encoding resolved, or ``OptionError`` saying what is refused."""
    fmt = options.fmt
    if options.refine not in REFINE_MODES:
        raise OptionError(f"unknown refine {options.refine!r}; use one of {REFINE_MODES}")
    if options.zoom not in ZOOM_MODES:
        raise OptionError(f"unknown zoom {options.zoom!r}; use one of {ZOOM_MODES}")
    if fmt not in FORMAT_ENCODINGS:
        raise OptionError(f"unknown format {fmt!r}; use one of {', '.join(FORMAT_ENCODINGS)}")
    for name, wanted in (
        ("guided", options.refine == "guided"),
        ("zoom", options.zoom == "auto"),
        ("decontaminate", options.decontaminate),
    ):
        why = refusal(name, task) if wanted else None
        if why:
            raise OptionError(why)
    if options.decontaminate and fmt != "rgba":
        raise OptionError(
            f"decontaminate applies to the cut-out (format=rgba) only, not format={fmt}"
        )
    allowed = FORMAT_ENCODINGS[fmt]
    encoding = options.encoding or allowed[0]
    if encoding not in allowed:
        hint = {
            "jpeg": "JPEG is lossy and has no alpha, so it is offered for overlays only",
            "webp": "the JSON body embeds a PNG",
            "png": "format=webp is the mask as WebP",
        }.get(encoding, "unknown encoding")
        raise OptionError(
            f"encoding={encoding} is not available for format={fmt} ({hint}); "
            f"use one of: {', '.join(allowed)}"
        )
    return replace(options, encoding=encoding)


# -------------------------------------------------------------------------------- zoom pass


@dataclass(frozen=True)
class ZoomPass:
    """The second pass's input: the crop of the original image, prepared for the network."""

    crop: ZoomCrop
    rgb: np.ndarray  # uint8 [h, w, 3], the crop of the original image
    inputs: Prepared


@dataclass(frozen=True)
class ZoomDecision:
    crop: ZoomPass | None
    reason: str


def plan_zoom_pass(image: PreparedImage, soft: np.ndarray, card: ModelCard) -> ZoomDecision:
    """Whether a second pass on a crop around the object helps, and its input if so."""
    crop = plan_zoom(soft, card.input_short_side, card.input_max_size)
    if crop is None:
        return ZoomDecision(
            None, "not needed: no foreground, or the object is too large for a crop to be "
            "seen at least 1.5x larger"
        )
    rgb = np.ascontiguousarray(image.rgb[crop.y0 : crop.y1, crop.x0 : crop.x1])
    inputs = preprocess_with_card(rgb, card)
    gain = inputs.resized_size[0] / crop.height / (
        image.inputs.resized_size[0] / image.inputs.original_size[0]
    )
    return ZoomDecision(
        ZoomPass(crop, rgb, inputs), f"the object is small: the crop is seen {gain:.1f}x larger"
    )


# ------------------------------------------------------------------------------- refinement


def refine_result(
    image: PreparedImage,
    soft: np.ndarray,
    options: SegmentOptions,
    zoom: ZoomDecision | None = None,
    zoom_outputs: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, RefinementInfo]:
    """The first pass's soft mask with the zoom pass blended in and the guided filter applied.

    ``zoom_outputs`` are the network outputs (class_probs [2,2], mask_logits [2,h,w]) for
    ``zoom.crop``. Size and range never change: float32 [H, W] in [0, 1].
    """
    p = image.inputs
    zoom_info = None
    if zoom is not None:
        crop_box = None
        if zoom.crop is not None and zoom_outputs is not None:
            q = zoom.crop.inputs
            crop_soft, _ = postprocess(
                zoom_outputs[0], zoom_outputs[1], q.padded_size, q.resized_size,
                q.original_size, with_binary=False,
            )  # fmt: skip
            band = foreground_radius(p.original_size, p.resized_size)
            soft = blend_zoom(soft, crop_soft, zoom.crop.crop, band)
            x, y, w, h = zoom.crop.crop.as_xywh()
            crop_box = BoundingBox(x=x, y=y, width=w, height=h)
        zoom_info = ZoomInfo(ran=crop_box is not None, crop=crop_box, reason=zoom.reason)
    if options.refine == "guided":
        soft = refine_guided(image.rgb, soft, p.resized_size)
    return soft, RefinementInfo(refine=options.refine, zoom=zoom_info)


def response_headers(network: NetworkInput, info: RefinementInfo) -> dict[str, str]:
    """``X-Focus-Network-Size`` (WxH the network saw), ``X-Focus-Scale`` (network/original),
    and, when asked for, ``X-Focus-Refine`` and ``X-Focus-Zoom`` (ran | not-needed)."""
    headers = {
        "X-Focus-Network-Size": f"{network.width}x{network.height}",
        "X-Focus-Scale": str(network.scale),
    }
    if info.refine != "none":
        headers["X-Focus-Refine"] = info.refine
    if info.zoom is not None:
        headers["X-Focus-Zoom"] = "ran" if info.zoom.ran else "not-needed"
    return headers
