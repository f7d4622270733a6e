"""Write a Triton Inference Server model repository from our model repository.

    focus export triton --model-repository SRC --out DIR
        [--platform onnxruntime_onnx|tensorrt_plan] [--model-backend native|python-onnxruntime]

For the served version ``V`` of every task of ``SRC`` this writes the network model
``DIR/<task>/config.pbtxt`` with ``V/model.onnx`` (or ``V/model.plan``) and a copy of
``focus.json``, plus the ensemble that takes encoded image bytes and returns the PNG mask
(``<task>_preprocess`` -> ``<task>`` -> ``<task>_postprocess`` as ``<task>_ensemble``; see
``export.triton_ensemble``), so a Triton client needs none of our code. A graph with external
data (over 2 GB, or exported with ``--external-data``) travels with its weights,
``V/model.onnx.data``, which ONNX Runtime (Triton's backend or the Python model) reads beside
the graph.

The network config follows the ONNX contract: inputs ``image``/``edges`` and outputs
``class_probs``/``mask_logits`` without the batch dimension (``-1`` for the dynamic H and W),
``max_batch_size``, dynamic batching (Triton only batches requests whose tensors have the same
shape, which is our batch-by-padded-shape rule) and an instance group. Model backends:

* ``native`` (default): Triton's own ``onnxruntime_onnx`` or ``tensorrt_plan`` platform, as in
  NVIDIA's containers. A ``tensorrt_plan`` entry takes its max batch from
  ``model.engine.json`` and only runs under a Triton release built with the same TensorRT
  version, on the same GPU model.
* ``python-onnxruntime``: a Python-backend model running ``model.onnx`` with ONNX Runtime on
  the CPU (``export/triton_python/onnxruntime_model.py``), for Triton builds without the ONNX
  Runtime backend, such as the ``tritonserver`` inside the ``nvidia-pytriton`` wheel.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from export.triton_ensemble import (
    ONNXRUNTIME_SOURCE,
    PYTHON_PATH_KEY,
    check_python_path,
    default_python_path,
    network_io,
    write_ensemble,
    write_python_model,
)
from export.triton_pbtxt import dynamic_batching, header, instance_group, parameters, quote, tensors
from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    DEFAULT_MAX_PIXELS,
    ENGINE_FILE,
    ONNX_FILE,
    EngineSidecar,
    SidecarError,
    engine_sidecar_path,
    external_data_file,
)
from models.repository import ModelEntry, scan_repository

logger = logging.getLogger(__name__)

PLATFORMS = {
    "onnxruntime_onnx": (ONNX_FILE, "model.onnx"),
    "tensorrt_plan": (ENGINE_FILE, "model.plan"),
}
MODEL_BACKENDS = ("native", "python-onnxruntime")
KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")


@dataclass(frozen=True)
class TritonOptions:
    platform: str = "onnxruntime_onnx"
    model_backend: str = "native"
    max_batch: int | None = None  # None: 8 for ONNX, the engine's for a plan
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_AUTO"
    # Where the Python models import `models` (and numpy, ...) from; None: this installation.
    python_path: tuple[str, ...] | None = None
    python_instances: int = 1  # instances of each preprocess / postprocess model
    max_pixels: int = DEFAULT_MAX_PIXELS
    intra_op_threads: int = 0  # ONNX Runtime threads of the python-onnxruntime model; 0: default

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {sorted(PLATFORMS)}, got {self.platform!r}")
        if self.model_backend not in MODEL_BACKENDS:
            raise ValueError(
                f"model backend must be one of {MODEL_BACKENDS}, got {self.model_backend!r}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"instance kind must be one of {KINDS}, got {self.kind!r}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {self.max_batch}")
        if self.instances < 1 or self.python_instances < 1 or self.max_queue_delay_us < 0:
            raise ValueError("instances must be >= 1 and the queue delay >= 0")
        if self.max_pixels < 1 or self.intra_op_threads < 0:
            raise ValueError("max pixels must be >= 1 and intra-op threads >= 0")
        if self.platform == "tensorrt_plan" and self.kind == "KIND_CPU":
            raise ValueError("a TensorRT plan cannot run on KIND_CPU")
        if self.model_backend == "python-onnxruntime":
            if self.platform != "onnxruntime_onnx":
                raise ValueError(
                    "--model-backend python-onnxruntime runs model.onnx; it cannot "
                    f"serve platform {self.platform}"
                )
            if self.kind == "KIND_GPU":
                raise ValueError("--model-backend python-onnxruntime runs on the CPU (KIND_CPU)")
        if self.python_path is not None:
            check_python_path(self.python_path)

    @property
    def resolved_python_path(self) -> tuple[str, ...]:
        return self.python_path if self.python_path is not None else default_python_path()


def config_pbtxt(name: str, card: ModelCard, options: TritonOptions, max_batch: int) -> str:
    """The ``config.pbtxt`` text of one task's network model."""
    inputs, outputs = network_io(card)
    comment = f"FOCUS {card.task} ({card.preset}, version {card.version})"
    if options.model_backend == "python-onnxruntime":
        runtime = ['backend: "python"']
        kind = "KIND_CPU"
        tail = parameters(
            {
                PYTHON_PATH_KEY: ":".join(options.resolved_python_path),
                "intra_op_threads": str(options.intra_op_threads),
            }
        )
    else:
        runtime = [f"platform: {quote(options.platform)}"]
        kind = options.kind
        tail = [f"default_model_filename: {quote(PLATFORMS[options.platform][1])}"]
    lines = [
        *header(comment, name),
        *runtime,
        f"max_batch_size: {max_batch}",
        *tensors("input", inputs),
        *tensors("output", outputs),
        *dynamic_batching(max_batch, options.max_queue_delay_us),
        *instance_group(options.instances, kind),
        *tail,
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


def _max_batch(entry: ModelEntry, options: TritonOptions) -> int:
    if options.platform != "tensorrt_plan":
        return options.max_batch or 8
    model_file = entry.path(ENGINE_FILE)
    engine_batch = _engine_max_batch(model_file)
    if options.max_batch is not None and options.max_batch > engine_batch:
        raise ValueError(
            f"{model_file} was built for batch <= {engine_batch}; --max-batch "
            f"{options.max_batch} exceeds it"
        )
    return options.max_batch or engine_batch


def _write_network(out: Path, entry: ModelEntry, options: TritonOptions, max_batch: int) -> Path:
    artefact, target_name = PLATFORMS[options.platform]
    model_dir = out / entry.task
    version_dir = model_dir / str(entry.version)
    version_dir.mkdir(parents=True, exist_ok=True)
    if options.model_backend == "python-onnxruntime":
        write_python_model(version_dir, ONNXRUNTIME_SOURCE)
    shutil.copyfile(entry.path(artefact), version_dir / target_name)
    data = entry.path(external_data_file(artefact))
    if artefact == ONNX_FILE and data.is_file():  # > 2 GB: the weights travel beside the graph
        shutil.copyfile(data, version_dir / external_data_file(target_name))
    shutil.copyfile(entry.path(CARD_FILE), model_dir / CARD_FILE)
    (model_dir / "config.pbtxt").write_text(
        config_pbtxt(entry.task, entry.card, options, max_batch), encoding="utf-8"
    )
    return model_dir


def write_triton_repository(
    source: str | Path, out: str | Path, options: TritonOptions | None = None
) -> list[Path]:
    """Write every task's network and ensemble models into ``out``; returns the model dirs."""
    options = options or TritonOptions()
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"model repository {source} is not a directory")
    if out.resolve() == source.resolve():
        raise ValueError("--out must differ from --model-repository")
    artefact = PLATFORMS[options.platform][0]
    entries = scan_repository(source)
    usable = {task: e for task, e in entries.items() if e.has(artefact)}
    skipped = [f"{task} (no {artefact})" for task in entries if task not in usable]
    if not usable:
        raise ValueError(
            f"no task in {source} has focus.json and {artefact}"
            + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        )
    batches = {task: _max_batch(entry, options) for task, entry in usable.items()}  # fail early
    written = []
    for task, entry in usable.items():
        written.append(_write_network(out, entry, options, batches[task]))
        written += write_ensemble(
            out,
            task,
            entry.card,
            entry.version,
            entry.path(CARD_FILE),
            python_path=options.resolved_python_path,
            instances=options.python_instances,
            max_pixels=options.max_pixels,
        )
        logger.info(
            "wrote Triton models of %s version %d (%s %s, max batch %d)",
            task,
            entry.version,
            options.model_backend,
            options.platform,
            batches[task],
        )
    for s in skipped:
        logger.warning("not exported to Triton: %s", s)
    return written
