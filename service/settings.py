"""Service settings: one pydantic-settings class, every knob a ``FOCUS_*`` environment variable.

Nothing here is instantiated at import time; ``create_app(Settings())`` and the CLI build one.
Invalid combinations are rejected with a precise message instead of being silently fixed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.contract import DEFAULT_MAX_PIXELS
from models.tasks import UnknownTaskError, canonical_task
from models.zoo import Source, SourceError, parse_sources

MiB = 1024 * 1024

BackendName = Literal["auto", "onnxruntime", "openvino", "tensorrt", "torch"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16", "int8"]
DeviceName = Literal["cpu", "cuda"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
def parse_model_versions(value: str) -> dict[str, int]:
    """``camouflage:2,sod:1`` -> ``{"camouflage": 2, "salient": 1}``; ValueError if malformed."""
    pinned: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, number = item.partition(":")
        if not sep or not number.strip().isdigit() or int(number) < 1:
            raise ValueError(
                f"FOCUS_MODEL_VERSIONS entry {item!r} is not TASK:VERSION (a positive integer)"
            )
        try:
            task = canonical_task(name.strip())
        except UnknownTaskError as exc:
            raise ValueError(f"FOCUS_MODEL_VERSIONS: {exc}") from None
        if task in pinned:
            raise ValueError(f"FOCUS_MODEL_VERSIONS pins {task!r} twice")
        pinned[task] = int(number)
    return pinned


class Settings(BaseSettings):
    """Runtime configuration of the segmentation service (``FOCUS_<FIELD>`` in the environment)."""

    model_config = SettingsConfigDict(
        env_prefix="FOCUS_",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        protected_namespaces=(),
    )

    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Directory holding <task>/<version>/focus.json plus model.onnx / "
        "model.engine / model.safetensors (a flat <task>/ is version 1); every task found is "
        "served, at its highest version unless FOCUS_MODEL_VERSIONS pins one.",
    )
    backend: BackendName = Field(
        default="auto",
        description="Inference backend; 'auto' picks TensorRT, then ONNX Runtime, then PyTorch "
        "among those available on FOCUS_DEVICE; on the CPU it times every gated precision variant "
        "(ONNX Runtime fp32/int8, OpenVINO fp32/bf16/int8) at load and keeps the fastest.",
    )
    device: DeviceName = Field(default="cpu", description="Where inference runs.")
    require_gpu: bool = Field(
        default=False,
        description="Fail at start-up instead of falling back to CPU when CUDA is missing.",
    )
    host: str = Field(default="0.0.0.0", description="Address `focus serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `focus serve` binds.")
    max_batch_size: int = Field(
        default=8, ge=1, le=1024, description="Largest batch sent to a backend."
    )
    max_delay_ms: float = Field(
        default=10.0,
        ge=0,
        le=10_000,
        description="How long a batch waits for more requests after its first.",
    )
    max_queue: int = Field(default=64, ge=1, description="Queued requests per task before 503.")
    timeout_s: float = Field(
        default=30.0, gt=0, description="Per-request deadline (504 when exceeded)."
    )
    max_body_bytes: int = Field(
        default=20 * MiB, ge=1, description="Largest accepted request body."
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="Largest accepted image (width x height), read from the header.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, /segment and /tasks require it in the X-API-Key header.",
    )
    engine_cache: Path = Field(
        default=Path("/var/cache/focus/engines"),
        description="Also searched for TensorRT engines: <engine_cache>/<task>/model.engine.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="Threads of every inference runtime (ONNX Runtime, OpenVINO, PyTorch), "
        "which run one batch at a time per device; 0: the usable cores.",
    )
    log_level: LogLevel = Field(default="info", description="Log level of the service and uvicorn.")
    workers: int = Field(
        default=1,
        ge=1,
        description="uvicorn worker processes (>1 switches metrics to multiprocess mode).",
    )
    # --- precision variants (models/precision.py, service/backends/factory.py)
    precision: PrecisionName = Field(
        default="auto",
        description="Precision variant: fp32, bf16 (OpenVINO, or torch autocast), fp16 (torch on "
        "CUDA), int8 (model.int8.onnx, OpenVINO model.int8.xml); auto: fp32 with a named backend, "
        "the fastest gated variant with FOCUS_BACKEND=auto.",
    )
    force_ungated: bool = Field(
        default=False,
        description="Serve a precision variant whose accuracy gate in focus.json failed, is "
        "missing or was measured against another model.onnx (refused by default).",
    )
    openvino_cache: Path | None = Field(
        default=Path("/var/cache/focus/openvino"),
        description="OpenVINO compiled-model cache (one folder per task, version, artefact and "
        "precision): a restart imports instead of compiling. Empty: no cache.",
    )
    auto_timed_runs: int = Field(
        default=3,
        ge=1,
        le=100,
        description="FOCUS_BACKEND=auto on the CPU: timed calls per gated variant at load, after "
        "one warm-up; the fastest call counts (others' load only ever adds time).",
    )
    # --- FOCUS_PULL (service/pull.py): released checkpoints pulled into the repository at start
    pull: str | None = Field(
        default=None,
        description="Comma-separated TASK[:SIZE][@REVISION] (e.g. camouflage:large,salient:large)"
        " pulled from the Hugging Face Hub at start-up by `focus pull` when the repository has "
        "no version of them yet; the demo model serves each task until its pull is published.",
    )
    require_pull: bool = Field(
        default=False,
        description="Pull before serving and fail start-up when a FOCUS_PULL entry fails.",
    )

    # --- hardening (service/admission.py, service/server.py)
    max_inflight_per_task: int = Field(
        default=64,
        ge=1,
        description="Requests of one task admitted at once (reading, queued, computing, "
        "encoding); more get 503 overloaded before their body is read.",
    )
    max_inflight_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="Decoded pixels (width x height, from the image header) of all admitted "
        "requests together; a request that does not fit gets 503 overloaded at once. Bounds "
        "the memory of decoding and post-processing; at least FOCUS_MAX_PIXELS.",
    )
    read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="The request headers, and then the whole body, must arrive within this "
        "(408 and the connection closed otherwise).",
    )
    drain_delay_s: float = Field(
        default=5.0,
        ge=0,
        description="At SIGTERM, /health/ready answers 503 and the listener stays open this "
        "long before new requests are refused and the queues drain.",
    )
    # --- model lifecycle (service/model_slot.py, routes/admin.py) and the response cache
    model_versions: str | None = Field(
        default=None,
        description="Comma-separated TASK:VERSION (e.g. camouflage:2,salient:1) pinning the "
        "repository version served per task; unpinned tasks serve their highest version.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Enables POST /admin/reload, which then requires it in the X-Admin-Key "
        "header; unset: the admin API is off (404).",
    )
    repository_poll_s: float = Field(
        default=0.0,
        ge=0,
        description="Rescan the model repository every this many seconds and switch to new "
        "versions without a restart; 0: off (reload with POST /admin/reload).",
    )
    cache_mb: float = Field(
        default=0.0,
        ge=0,
        description="Response cache size in MiB (LRU by bytes; key: model version, image bytes "
        "hash, query parameters); 0: off.",
    )

    @field_validator("pull")
    @classmethod
    def _check_pull(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parse_sources(value)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("model_versions")
    @classmethod
    def _check_model_versions(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_model_versions(value)
        return value.strip()

    @field_validator("openvino_cache", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.backend == "tensorrt" and self.device != "cuda":
            raise ValueError("FOCUS_BACKEND=tensorrt needs FOCUS_DEVICE=cuda")
        if self.backend == "openvino" and self.device != "cpu":
            raise ValueError("FOCUS_BACKEND=openvino runs on the CPU (FOCUS_DEVICE=cpu)")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("FOCUS_PRECISION=fp16 needs FOCUS_DEVICE=cuda (on the CPU use bf16)")
        if self.require_gpu and self.device != "cuda":
            raise ValueError("FOCUS_REQUIRE_GPU=true needs FOCUS_DEVICE=cuda")
        if self.max_inflight_pixels < self.max_pixels:
            raise ValueError(
                f"FOCUS_MAX_INFLIGHT_PIXELS ({self.max_inflight_pixels}) must be at least "
                f"FOCUS_MAX_PIXELS ({self.max_pixels}), or the largest image is never admitted"
            )
        if self.require_pull and not self.pull_sources:
            raise ValueError("FOCUS_REQUIRE_PULL=true needs FOCUS_PULL (what to pull)")
        return self

    @property
    def pull_sources(self) -> tuple[Source, ...]:
        """``FOCUS_PULL`` parsed (validated when the settings are built)."""
        return parse_sources(self.pull or "")

    @property
    def pinned_versions(self) -> dict[str, int]:
        """``FOCUS_MODEL_VERSIONS`` parsed: canonical task -> repository version."""
        return parse_model_versions(self.model_versions or "")

    def admin_key_value(self) -> str | None:
        return self.admin_key.get_secret_value() if self.admin_key is not None else None

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1000.0

    @property
    def inference_threads(self) -> int:
        """The one thread count of every inference runtime (``FOCUS_INTRA_OP_THREADS``)."""
        return self.intra_op_threads or usable_cores()

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None
