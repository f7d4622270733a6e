"""Response bodies of the JSON endpoints (they also make the OpenAPI schema complete)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    task: str = Field(examples=["camouflage"])
    preset: str = Field(examples=["tiny"])
    version: str = Field(examples=["1"])
    backend: str = Field(examples=["onnxruntime"])
    device: str = Field(examples=["cpu"])
    repository_version: int | None = Field(
        default=None,
        examples=[2],
        description="the model repository's version directory served (<repo>/<task>/<version>;"
        " the flat layout is 1); `version` is focus.json's own version string.",
    )
    precision: str = Field(
        default="fp32", examples=["bf16"], description="fp32, bf16, fp16 or int8"
    )
    gate: str = Field(
        default="",
        description="the precision variant's accuracy gate vs fp32 (from focus.json), in words "
        "(GET /tasks; empty in /segment results)",
    )
    selection: str = Field(
        default="",
        description="FOCUS_BACKEND=auto: why this backend and precision were chosen (GET /tasks; "
        "empty in /segment results)",
    )


class BoundingBox(BaseModel):
    """Tight box around the foreground pixels, in original-image pixel coordinates."""

    x: int = Field(ge=0, examples=[12])
    y: int = Field(ge=0, examples=[30])
    width: int = Field(ge=1, examples=[200])
    height: int = Field(ge=1, examples=[150])


class Timing(BaseModel):
    """Server-side milliseconds per stage (also sent as the Server-Timing header)."""

    preprocess_ms: float = Field(description="decode, resize, normalise, edge map")
    queue_ms: float = Field(description="waiting for a batch")
    compute_ms: float = Field(description="the backend call for the whole batch")
    postprocess_ms: float = Field(description="mask at the original size and encoding")
    total_ms: float = Field(description="from the first body byte to the response")
    batch_size: int = Field(ge=1, description="images in the backend call that computed this one")


class NetworkInput(BaseModel):
    """What the network saw: the image resized by its short side (and capped on its long side).

    Also sent for every image response as ``X-Focus-Network-Size`` (``WxH``) and
    ``X-Focus-Scale``."""

    width: int = Field(ge=1, examples=[171])
    height: int = Field(ge=1, examples=[128])
    scale: float = Field(
        gt=0, description="network size / original size (below 1: the image was downscaled)",
        examples=[0.0625],
    )


class ZoomInfo(BaseModel):
    """The zoom pass (``zoom=auto``): whether it ran and on which crop."""

    ran: bool = Field(description="true: a second pass on the crop was blended in")
    crop: BoundingBox | None = Field(description="the crop of the second pass, original pixels")
    reason: str = Field(examples=["the object is small: the crop is seen 3.2x larger"])


class RefinementInfo(BaseModel):
    """The opt-in full-resolution refinements applied to this mask."""

    refine: str = Field(default="none", description="none | guided (edge-aware upsampling)")
    zoom: ZoomInfo | None = Field(default=None, description="null unless zoom=auto")


class SegmentResult(BaseModel):
    """``format=json``: the mask plus summary statistics."""

    task: str = Field(examples=["camouflage"])
    width: int = Field(ge=1, description="original image width (EXIF orientation applied)")
    height: int = Field(ge=1, description="original image height")
    mask_png_base64: str = Field(
        description="8-bit grayscale PNG of the mask at the original size: the probability x 255, "
        "or 0/255 when a threshold is given"
    )
    threshold: float | None = Field(
        description="the threshold applied; null: statistics use the model's own binary mask"
    )
    foreground_fraction: float = Field(ge=0, le=1, description="share of foreground pixels")
    bbox: BoundingBox | None = Field(description="null when there is no foreground")
    mean_confidence: float = Field(
        ge=0.5, le=1, description="mean over pixels of max(p, 1 - p), p the soft mask"
    )
    model: ModelInfo
    timing: Timing
    network: NetworkInput
    refinement: RefinementInfo = Field(default_factory=RefinementInfo)


class InputInfo(BaseModel):
    short_side: int = Field(examples=[256])
    max_size: int = Field(examples=[1024])
    size_divisibility: int = Field(examples=[32])


class TaskInfo(BaseModel):
    name: str = Field(examples=["camouflage"])
    aliases: list[str] = Field(examples=[["cod"]])
    description: str = Field(examples=["camouflaged object detection"])
    model: ModelInfo
    input: InputInfo
    max_batch_size: int = Field(examples=[8])


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]


class LiveResponse(BaseModel):
    status: str = Field(examples=["alive"])


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    tasks: list[str] = Field(examples=[["camouflage", "salient"]])


class TaskReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    task: str = Field(examples=["camouflage"])
    repository_version: int = Field(examples=[2], description="the version serving")
    staging_version: int | None = Field(
        examples=[None], description="a version being loaded and warmed beside it, if any"
    )


class ReloadOutcomeInfo(BaseModel):
    task: str = Field(examples=["camouflage"])
    status: str = Field(examples=["loaded"], description="loaded, unchanged or failed")
    requested: int = Field(examples=[3], description="the version the repository asked for")
    serving: int | None = Field(examples=[3], description="the version serving afterwards")
    previous: int | None = Field(examples=[2], description="the version served before")
    error: str | None = Field(default=None, description="why a failed version is not served")


class ReloadResponse(BaseModel):
    tasks: list[ReloadOutcomeInfo]
