"""The image-bytes -> PNG-mask ensemble of one task, and its Python-backend models.

Per task ``focus export triton`` writes, beside the network model ``<task>``:

* ``<task>_preprocess`` (Python backend): encoded image bytes -> ``image``, ``edges`` and the
  original / resized / padded sizes (``models.imaging`` + ``models.processing``);
* ``<task>_postprocess`` (Python backend): ``class_probs``, ``mask_logits`` and the sizes ->
  ``mask_png`` (``models.processing.postprocess`` + the PNG encoder);
* ``<task>_ensemble`` (``platform: "ensemble"``): ``image_bytes`` -> preprocess -> ``<task>``
  -> postprocess -> ``mask_png``. Only the network step batches (Triton's dynamic batcher puts
  together requests of equal shape, i.e. our same-padded-shape rule); the ensemble and the
  Python steps take one image per request.

Every model of a task gets the task's served version as its version directory, and the
ensemble pins that version in each step, so a repository never mixes one version's
preprocessing with another's network. The Python models find the ``models`` package (and
numpy, Pillow, OpenCV, ONNX Runtime) through ``python_path`` in their ``config.pbtxt``
(see ``export/triton_python/focus_bootstrap.py``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from export.triton_pbtxt import Tensor, header, instance_group, parameters, quote, tensors
from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    SIZE_NAMES,
)

SOURCES = Path(__file__).resolve().parent / "triton_python"
BOOTSTRAP = "focus_bootstrap.py"
PYTHON_PATH_KEY = "python_path"
PREPROCESS_SOURCE = "preprocess.py"
POSTPROCESS_SOURCE = "postprocess.py"
ONNXRUNTIME_SOURCE = "onnxruntime_model.py"


@dataclass(frozen=True)
class EnsembleNames:
    """The Triton model names of one task's ensemble and its steps."""

    network: str
    preprocess: str
    postprocess: str
    ensemble: str


def ensemble_names(task: str) -> EnsembleNames:
    return EnsembleNames(
        network=task,
        preprocess=f"{task}_preprocess",
        postprocess=f"{task}_postprocess",
        ensemble=f"{task}_ensemble",
    )


def default_python_path() -> tuple[str, ...]:
    """The directory holding this installation's ``models`` package (a checkout's root)."""
    return (str(Path(__file__).resolve().parents[1]),)


def check_python_path(entries: tuple[str, ...]) -> None:
    for entry in entries:
        if (
            not entry
            or os.pathsep in entry
            or any(c in entry for c in '"\\')
            or (not entry.isprintable())
        ):
            raise ValueError(
                f"python path entry {entry!r} must be a non-empty directory name without "
                f"{os.pathsep!r}, quotes or backslashes"
            )


def network_io(card: ModelCard) -> tuple[list[Tensor], list[Tensor]]:
    """The ONNX contract's inputs and outputs without the batch dimension."""
    q, k = card.config.num_queries, card.config.num_classes
    inputs: list[Tensor] = [
        (INPUT_NAMES[0], "TYPE_FP32", (3, -1, -1)),
        (INPUT_NAMES[1], "TYPE_FP32", (3, -1, -1)),
    ]
    outputs = [(OUTPUT_NAMES[0], "TYPE_FP32", (q, k)), (OUTPUT_NAMES[1], "TYPE_FP32", (q, -1, -1))]
    return inputs, outputs


def _sizes() -> list[Tensor]:
    return [(name, "TYPE_INT32", (2,)) for name in SIZE_NAMES]


def _python_model(
    comment: str,
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    instances: int,
    params: dict[str, str],
) -> str:
    lines = [
        *header(comment, name),
        'backend: "python"',
        "max_batch_size: 1",
        *tensors("input", inputs),
        *tensors("output", outputs),
        *instance_group(instances, "KIND_CPU"),
        *parameters(params),
    ]
    return "\n".join(lines) + "\n"


def preprocess_config(
    task: str, card: ModelCard, python_path: tuple[str, ...], instances: int, max_pixels: int
) -> str:
    image, edges = network_io(card)[0]
    return _python_model(
        f"FOCUS {card.task} preprocessing (decode, resize, normalise, pad, edge map)",
        ensemble_names(task).preprocess,
        [(ENSEMBLE_INPUT, "TYPE_STRING", (1,))],
        [image, edges, *_sizes()],
        instances,
        {PYTHON_PATH_KEY: ":".join(python_path), "max_pixels": str(max_pixels)},
    )


def postprocess_config(
    task: str, card: ModelCard, python_path: tuple[str, ...], instances: int
) -> str:
    return _python_model(
        f"FOCUS {card.task} postprocessing (mask at the original size, PNG)",
        ensemble_names(task).postprocess,
        [*network_io(card)[1], *_sizes()],
        [(ENSEMBLE_OUTPUT, "TYPE_STRING", (1,))],
        instances,
        {PYTHON_PATH_KEY: ":".join(python_path)},
    )


def _map(field: str, pairs: list[tuple[str, str]]) -> list[str]:
    return [f"      {field} {{ key: {quote(k)} value: {quote(v)} }}" for k, v in pairs]


def _step(model: str, version: int, inputs: list[str], outputs: list[str]) -> list[str]:
    return [
        "    {",
        f"      model_name: {quote(model)}",
        f"      model_version: {version}",
        *_map("input_map", [(n, n) for n in inputs]),
        *_map("output_map", [(n, n) for n in outputs]),
        "    }",
    ]


def ensemble_config(task: str, card: ModelCard, version: int) -> str:
    """``image_bytes`` -> preprocess -> network -> postprocess -> ``mask_png``.

    Each step's tensor keeps its name across steps (the ensemble's internal tensors are the
    ONNX contract's names and the three sizes), so the wiring reads as the data flow.
    """
    names = ensemble_names(task)
    steps = [
        _step(names.preprocess, version, [ENSEMBLE_INPUT], [*INPUT_NAMES, *SIZE_NAMES]),
        _step(names.network, version, list(INPUT_NAMES), list(OUTPUT_NAMES)),
        _step(names.postprocess, version, [*OUTPUT_NAMES, *SIZE_NAMES], [ENSEMBLE_OUTPUT]),
    ]
    lines = [
        *header(f"FOCUS {card.task} image bytes -> PNG mask (version {version})", names.ensemble),
        'platform: "ensemble"',
        "max_batch_size: 1",
        *tensors("input", [(ENSEMBLE_INPUT, "TYPE_STRING", (1,))]),
        *tensors("output", [(ENSEMBLE_OUTPUT, "TYPE_STRING", (1,))]),
        "ensemble_scheduling {",
        "  step [",
    ]
    for i, step in enumerate(steps):
        lines += step[:-1] + [step[-1] + ("," if i < len(steps) - 1 else "")]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def write_python_model(version_dir: Path, source: str, card_file: Path | None = None) -> None:
    """``model.py`` (from ``source``) and the bootstrap into ``version_dir`` (+ the card)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCES / source, version_dir / "model.py")
    shutil.copyfile(SOURCES / BOOTSTRAP, version_dir / BOOTSTRAP)
    if card_file is not None:
        shutil.copyfile(card_file, version_dir / CARD_FILE)


def write_ensemble(
    out: Path,
    task: str,
    card: ModelCard,
    version: int,
    card_file: Path,
    *,
    python_path: tuple[str, ...],
    instances: int,
    max_pixels: int,
) -> list[Path]:
    """Write the preprocess, postprocess and ensemble models of one task; returns their dirs."""
    names = ensemble_names(task)
    configs = {
        names.preprocess: (
            preprocess_config(task, card, python_path, instances, max_pixels),
            PREPROCESS_SOURCE,
        ),
        names.postprocess: (
            postprocess_config(task, card, python_path, instances),
            POSTPROCESS_SOURCE,
        ),
        names.ensemble: (ensemble_config(task, card, version), None),
    }
    written = []
    for name, (text, source) in configs.items():
        model_dir = out / name
        version_dir = model_dir / str(version)
        if source is None:
            version_dir.mkdir(parents=True, exist_ok=True)  # Triton wants the version directory
        else:
            write_python_model(version_dir, source, card_file)
        (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
        written.append(model_dir)
    return written
