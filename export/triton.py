"""Write a Triton Inference Server model repository from our model repository.

    focus export triton --model-repository SRC --out DIR [--platform onnxruntime_onnx|tensorrt_plan]

For every task of ``SRC`` (``<task>/focus.json`` + ``model.onnx`` or ``model.engine``) this
writes ``DIR/<task>/config.pbtxt``, ``DIR/<task>/1/model.onnx`` (or ``1/model.plan``) and a copy
of ``focus.json`` beside the config (Triton ignores it; clients need it for the pre- and
post-processing, which stay on the client: Triton serves the network only).

The config follows Triton's ``ModelConfig`` (protobuf text format): the ONNX contract's inputs
``image``/``edges`` and outputs ``class_probs``/``mask_logits`` without the batch dimension
(``-1`` for the dynamic H and W), ``max_batch_size``, dynamic batching (Triton only batches
requests whose tensors have the same shape, which is our batch-by-padded-shape rule) and an
instance group. A ``tensorrt_plan`` entry takes its max batch from ``model.engine.json`` and
only runs under a Triton release built with the same TensorRT version, on the same GPU model.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    ENGINE_FILE,
    ONNX_FILE,
    EngineSidecar,
    SidecarError,
    engine_sidecar_path,
)
from models.repository import scan_repository

logger = logging.getLogger(__name__)

PLATFORMS = {
    "onnxruntime_onnx": (ONNX_FILE, "model.onnx"),
    "tensorrt_plan": (ENGINE_FILE, "model.plan"),
}
KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")


@dataclass(frozen=True)
class TritonOptions:
    platform: str = "onnxruntime_onnx"
    max_batch: int | None = None  # None: 8 for ONNX, the engine's for a plan
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_AUTO"

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {sorted(PLATFORMS)}, got {self.platform!r}")
        if self.kind not in KINDS:
            raise ValueError(f"instance kind must be one of {KINDS}, got {self.kind!r}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {self.max_batch}")
        if self.instances < 1 or self.max_queue_delay_us < 0:
            raise ValueError("instances must be >= 1 and the queue delay >= 0")
        if self.platform == "tensorrt_plan" and self.kind == "KIND_CPU":
            raise ValueError("a TensorRT plan cannot run on KIND_CPU")


def _quote(text: str) -> str:
    if not text.isprintable():
        raise ValueError(f"refusing a non-printable string in a Triton config: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensors(field: str, tensors: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    """``field [ {...}, {...} ]``: a repeated ModelInput/ModelOutput in list syntax."""
    lines = [f"{field} ["]
    for i, (name, dims) in enumerate(tensors):
        lines += [
            "  {",
            f"    name: {_quote(name)}",
            "    data_type: TYPE_FP32",
            f"    dims: {_dims(dims)}",
            "  }" + ("," if i < len(tensors) - 1 else ""),
        ]
    return [*lines, "]"]


def _preferred_batches(max_batch: int) -> list[int]:
    sizes, b = [], 2
    while b <= max_batch:
        sizes.append(b)
        b *= 2
    return sizes or [1]


def config_pbtxt(name: str, card: ModelCard, options: TritonOptions, max_batch: int) -> str:
    """The ``config.pbtxt`` text of one task."""
    num_queries = card.config.num_queries
    num_classes = card.config.num_classes
    lines = [
        f"# FOCUS {card.task} ({card.preset}, version {card.version}); written by "
        "`focus export triton`",
        f"name: {_quote(name)}",
        f"platform: {_quote(options.platform)}",
        f"max_batch_size: {max_batch}",
        *_tensors("input", [("image", (3, -1, -1)), ("edges", (3, -1, -1))]),
        *_tensors(
            "output",
            [("class_probs", (num_queries, num_classes)), ("mask_logits", (num_queries, -1, -1))],
        ),
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(tuple(_preferred_batches(max_batch)))}",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {options.instances}",
        f"    kind: {options.kind}",
        "  }",
        "]",
        f"default_model_filename: {_quote(PLATFORMS[options.platform][1])}",
    ]
    return "\n".join(lines) + "\n"


def _engine_max_batch(engine: Path) -> int:
    sidecar = engine_sidecar_path(engine)
    if not sidecar.is_file():
        raise ValueError(
            f"{engine}: no {sidecar.name} beside it (rebuild with `focus export tensorrt`)"
        )
    try:
        return EngineSidecar.load(engine).max_batch
    except SidecarError as exc:
        raise ValueError(str(exc)) from None


def write_triton_repository(
    source: str | Path, out: str | Path, options: TritonOptions | None = None
) -> list[Path]:
    """Write one Triton model per task of ``source`` into ``out``; returns the model dirs."""
    options = options or TritonOptions()
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"model repository {source} is not a directory")
    if out.resolve() == source.resolve():
        raise ValueError("--out must differ from --model-repository")
    artefact, target_name = PLATFORMS[options.platform]
    written = []
    skipped = []
    for task, entry in scan_repository(source).items():
        model_file = entry.path(artefact)
        if not entry.has(artefact):
            skipped.append(f"{task} (no {artefact})")
            continue
        card = entry.card
        if options.platform == "tensorrt_plan":
            engine_batch = _engine_max_batch(model_file)
            if options.max_batch is not None and options.max_batch > engine_batch:
                raise ValueError(
                    f"{model_file} was built for batch <= {engine_batch}; --max-batch "
                    f"{options.max_batch} exceeds it"
                )
            max_batch = options.max_batch or engine_batch
        else:
            max_batch = options.max_batch or 8
        model_dir = out / task
        version_dir = model_dir / str(entry.version)
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_file, version_dir / target_name)
        shutil.copyfile(entry.path(CARD_FILE), model_dir / CARD_FILE)
        (model_dir / "config.pbtxt").write_text(
            config_pbtxt(task, card, options, max_batch), encoding="utf-8"
        )
        logger.info(
            "wrote Triton model %s (%s, max batch %d)", model_dir, options.platform, max_batch
        )
        written.append(model_dir)
    if not written:
        raise ValueError(
            f"no task in {source} has focus.json and {artefact}"
            + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        )
    for s in skipped:
        logger.warning("not exported to Triton: %s", s)
    return written
