"""Precision variants of an exported FOCUS graph, each gated against fp32 (issue 17).

* :func:`quantize_int8` -> ``model.int8.onnx``: ONNX Runtime quantization, ``dynamic`` (int8
  weights, activations quantized per call) or ``static`` (QDQ, activation ranges calibrated on
  synthetic task scenes). MatMul/Gemm only: the FOCUS graph's time is in its matrix products,
  and quantizing the stem / edge-prior convolutions moves the mask without saving time.
  ``exclude`` (a regex of module paths, ``export.graph.node_module``) keeps modules in fp32.
* :func:`write_openvino_ir` -> ``model.xml`` + ``model.bin`` (fp32 weights; the runtime's
  precision hint picks f32 or bf16), and :func:`quantize_openvino_int8` -> ``model.int8.xml``
  (NNCF post-training int8 of the modules ``scope`` matches, bf16 elsewhere).
* :func:`measure_gate` runs a variant and fp32 ONNX Runtime on 8 synthetic scenes of the model's
  task (:func:`gate_images`: two aspect ratios, batch 1 and 4; never the calibration images)
  through the shared post-processing and returns the :class:`models.precision.PrecisionGate`;
  :func:`record_variant` writes it into ``focus.json`` beside the artefact.

Torch-free: everything here starts from ``model.onnx``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.graph import node_module
from export.parity import BATCH, DEFAULT_SIZES, Tolerance, measure_parity
from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    INPUT_NAMES,
    INT8_ONNX_FILE,
    ONNX_FILE,
    OPENVINO_INT8_XML_FILE,
    OPENVINO_XML_FILE,
    Predictor,
    openvino_weights_file,
    write_atomic,
)
from models.precision import (
    CARD_KEY,
    GATE_MAX_MEAN_ABS,
    GATE_MIN_IOU,
    PrecisionGate,
    Variant,
    file_sha256,
    trained_evidence,
)
from models.processing import preprocess_with_card
from models.synth import sample

logger = logging.getLogger(__name__)

INT8_MODES = ("dynamic", "static")
CALIBRATION_SEED = 1  # the gate's images use seed 0: calibration never sees them
# Default int8 exclusions (module-path regex kept in fp32), from benchmarks/int8_study.py on the
# tiny model (benchmarks/RESULTS.md, issue 17): dynamic int8 of every MatMul/Gemm moves the soft
# mask ~10x less than static QDQ, and no single stage kept in fp32 changes that by more than
# ~25 %; static QDQ needs the transformer decoder kept in fp32 (soft mean |diff| 0.073 -> 0.008).
# So: dynamic, nothing excluded; the gate decides per model.
DEFAULT_INT8_EXCLUDE = ""
VIT_SCOPE = r"^backbone\.blocks\."  # the ViT blocks: NNCF's default int8 scope


# ----------------------------------------------------------------------------- inputs


def calibration_batches(card: ModelCard, count: int, seed: int = CALIBRATION_SEED) -> list[dict]:
    """``count`` synthetic task scenes at the card's input size, preprocessed, one per batch."""
    import cv2

    tasks = ("salient", "camouflage", "shadow", "defocus", "forgery")
    side = card.input_short_side
    out = []
    for i in range(count):
        rgb, _ = sample(tasks[i % len(tasks)], index=i, seed=seed, size=side)
        rgb = cv2.resize(rgb, (side * 4 // 3, side), interpolation=cv2.INTER_AREA)
        p = preprocess_with_card(rgb, card)
        image = p.image[None].astype(np.float32)
        out.append({INPUT_NAMES[0]: image, INPUT_NAMES[1]: p.edges[None].astype(np.float32)})
    return out


def _matching_nodes(onnx_path: Path, ops: Sequence[str], pattern: str, inside: bool) -> list[str]:
    """Names of ``ops`` nodes whose module path matches (``inside``) or not ``pattern``."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    regex = re.compile(pattern)
    names = [
        n.name
        for n in proto.graph.node
        if n.op_type in ops and bool(regex.search(node_module(n.name))) == inside
    ]
    return names


# ----------------------------------------------------------------------------- ONNX Runtime int8


def quantize_int8(
    onnx_path: Path,
    out_path: Path,
    card: ModelCard,
    *,
    mode: str = "dynamic",
    exclude: str = DEFAULT_INT8_EXCLUDE,
    calibration_images: int = 8,
) -> dict[str, Any]:
    """Write ``out_path`` (int8) from the fp32 graph; returns its recipe for the model card."""
    if mode not in INT8_MODES:
        raise ValueError(f"unknown int8 mode {mode!r}; use {' or '.join(INT8_MODES)}")
    ops = ["MatMul", "Gemm"]
    excluded = _matching_nodes(onnx_path, ops, exclude, inside=True) if exclude else []
    start = time.perf_counter()
    root = logging.getLogger()
    level = root.level  # onnxruntime.quantization logs a line per tensor on the root logger
    root.setLevel(max(level, logging.WARNING))
    try:
        _quantize(onnx_path, out_path, card, mode, ops, excluded, calibration_images)
    finally:
        root.setLevel(level)
    return {
        "tool": "onnxruntime.quantization",
        "mode": mode,
        "ops": ops,
        "exclude": exclude,
        "excluded_nodes": len(excluded),
        "calibration_images": calibration_images if mode == "static" else 0,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _quantize(
    onnx_path: Path,
    out_path: Path,
    card: ModelCard,
    mode: str,
    ops: list[str],
    excluded: list[str],
    calibration_images: int,
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    large = onnx_path.with_name(onnx_path.name + ".data").is_file()
    if mode == "dynamic":
        quantize_dynamic(
            onnx_path,
            out_path,
            op_types_to_quantize=ops,
            nodes_to_exclude=excluded,
            weight_type=QuantType.QInt8,
            per_channel=True,
            use_external_data_format=large,
        )
    else:
        batches = calibration_batches(card, calibration_images)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it: Iterator[dict] = iter(batches)

            def get_next(self) -> dict | None:
                return next(self._it, None)

        quantize_static(
            onnx_path,
            out_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            nodes_to_exclude=excluded,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            use_external_data_format=large,
            extra_options={"CalibMovingAverage": True},
        )


# ----------------------------------------------------------------------------- OpenVINO


def write_openvino_ir(onnx_path: Path, xml_path: Path) -> dict[str, Any]:
    """``model.onnx`` -> ``model.xml`` + ``model.bin`` with fp32 weights (no fp16 compression)."""
    import openvino as ov

    start = time.perf_counter()
    model = ov.Core().read_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return {"tool": f"openvino {ov.__version__}", "weights": "f32",
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def quantize_openvino_int8(
    onnx_path: Path,
    xml_path: Path,
    card: ModelCard,
    *,
    scope: str = VIT_SCOPE,
    calibration_images: int = 8,
) -> dict[str, Any]:
    """NNCF post-training int8 of the MatMul/Convolution ops inside ``scope`` (bf16 elsewhere)."""
    import nncf
    import openvino as ov

    from models.runtime.openvino import on_own_thread

    start = time.perf_counter()
    model = ov.Core().read_model(str(onnx_path))
    regex = re.compile(scope)
    outside = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("MatMul", "Convolution")
        and not regex.search(node_module(op.get_friendly_name()))
    ]
    batches = calibration_batches(card, calibration_images)
    quantized = on_own_thread(  # NNCF compiles on OpenVINO's CPU plugin to collect statistics
        lambda: nncf.quantize(
            model,
            nncf.Dataset(batches),
            subset_size=len(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=outside, validate=False),
        )
    )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return {
        "tool": f"nncf {nncf.__version__}",
        "scope": scope,
        "left_unquantized": len(outside),
        "calibration_images": len(batches),
        "seconds": round(time.perf_counter() - start, 1),
    }


# ----------------------------------------------------------------------------- gate


GATE_SEED = 2  # calibration uses seed 1


def gate_images(card: ModelCard) -> list[list[np.ndarray]]:
    """8 synthetic scenes of the model's own task (``models.synth``, seed 2; the calibration
    images use seed 1), 4 per aspect ratio of ``export.parity.DEFAULT_SIZES``.

    In-distribution on purpose: on noise or blank fields even a trained model's two class scores
    are near ties, and its binary mask flips on any perturbation (issue 17), so a binary IoU
    measured there says nothing about the variant.
    """
    import cv2

    groups = []
    for k, (h, w) in enumerate(DEFAULT_SIZES):
        group = []
        for i in range(BATCH):
            rgb, _ = sample(card.task, index=k * BATCH + i, seed=GATE_SEED, size=min(h, w))
            group.append(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
        groups.append(group)
    return groups


def measure_gate(
    reference: Predictor,
    candidate: Predictor,
    card: ModelCard,
    *,
    reference_name: str,
    runtime_version: str,
    trained: bool | None = None,
) -> PrecisionGate:
    """Compare ``candidate`` with fp32 ``reference`` on the gate images; never raises on failure.

    ``trained`` None: from the card's provenance (:func:`models.precision.trained_evidence`).
    """
    evidence = trained_evidence(card.provenance)
    enforced = bool(evidence) if trained is None else trained
    why = evidence if trained is None else ("--trained" if trained else "--untrained")
    tolerance = Tolerance(
        "gate", soft_mean_abs=GATE_MAX_MEAN_ABS, min_iou=GATE_MIN_IOU if enforced else None
    )
    report = measure_parity(reference, candidate, card, tolerance, gate_images(card))
    sizes = ", ".join(f"{h}x{w}" for h, w in DEFAULT_SIZES)
    bad = float("nan") if report.non_finite else None
    return PrecisionGate(
        soft_max_abs=bad or report.soft_max_abs,
        soft_mean_abs=bad or report.soft_mean_abs,
        min_iou=bad or report.min_iou,
        images=report.images,
        image_set=f"synthetic {card.task} scenes (models.synth, seed {GATE_SEED}): "
        f"{report.images} images ({sizes}), batch 1 and {BATCH}",
        reference=reference_name,
        model=f"{card.task} {card.preset} version {card.version}",
        iou_enforced=enforced,
        trained_by=why or "untrained (no training provenance in focus.json)",
        runtime_version=runtime_version,
        measured_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def record_variant(directory: Path, variant: Variant) -> ModelCard:
    """Add (or replace) ``variant`` in ``directory/focus.json``, atomically.

    Only the ``precision_variants`` entry changes: the rest of the file is kept as written
    (its schema version and any field this version does not know).
    """
    path = directory / CARD_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    ModelCard.from_dict(data)  # refuse to extend a card this version cannot read
    variants = dict(data.get(CARD_KEY) or {})
    variants[variant.name] = variant.to_dict()
    data[CARD_KEY] = dict(sorted(variants.items()))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return ModelCard.load(directory)


def time_predictor(predictor: Predictor, feeds: dict, runs: int = 3) -> float:
    """Median seconds of ``runs`` calls after one warm-up call."""
    predictor.infer(feeds[INPUT_NAMES[0]], feeds[INPUT_NAMES[1]])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.infer(feeds[INPUT_NAMES[0]], feeds[INPUT_NAMES[1]])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ----------------------------------------------------------------------------- commands


def _ort(path: Path, threads: int) -> Any:
    from models.runtime.onnxruntime import OnnxRuntimePredictor

    return OnnxRuntimePredictor(path, intra_op_threads=threads)


def _ort_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def build_int8(
    onnx_path: Path,
    *,
    mode: str = "dynamic",
    exclude: str = DEFAULT_INT8_EXCLUDE,
    calibration_images: int = 8,
    trained: bool | None = None,
    threads: int = 0,
    echo: Callable[[str], None] = print,
) -> Variant:
    """``model.onnx`` -> ``model.int8.onnx`` beside it, gated; the gate goes into focus.json."""
    directory = onnx_path.parent
    card = ModelCard.load(directory)
    out = directory / INT8_ONNX_FILE
    recipe = quantize_int8(
        onnx_path, out, card, mode=mode, exclude=exclude, calibration_images=calibration_images
    )
    echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, int8 {mode}, {recipe['seconds']} s)")
    gate = measure_gate(
        _ort(onnx_path, threads),
        _ort(out, threads),
        card,
        reference_name=f"onnxruntime fp32 {ONNX_FILE}",
        runtime_version=_ort_version(),
        trained=trained,
    )
    recipe["fp32_sha256"] = file_sha256(onnx_path)
    variant = Variant("onnxruntime", "int8", INT8_ONNX_FILE, gate, recipe)
    record_variant(directory, variant)
    return variant


def build_openvino(
    onnx_path: Path,
    precisions: Sequence[str],
    *,
    write_ir: bool = True,
    int8_scope: str = VIT_SCOPE,
    calibration_images: int = 8,
    keep_slower_int8: bool = False,
    trained: bool | None = None,
    threads: int = 0,
    cache_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[Variant]:
    """OpenVINO variants of ``model.onnx``: the IR (unless ``write_ir`` is False: then OpenVINO
    reads model.onnx), gated per precision; int8 (NNCF) is kept only when faster than bf16."""
    from models.runtime.openvino import OpenVinoPredictor, openvino_version

    directory = onnx_path.parent
    card = ModelCard.load(directory)
    source, recipe = onnx_path, dict[str, Any](source=ONNX_FILE)
    if write_ir:
        xml = directory / OPENVINO_XML_FILE
        recipe = write_openvino_ir(onnx_path, xml)
        size = (xml.stat().st_size + (directory / openvino_weights_file(xml.name)).stat().st_size)
        echo(f"wrote {xml} + {openvino_weights_file(xml.name)} ({size / 1e6:.1f} MB)")
        source = xml
    reference = _ort(onnx_path, threads)
    feeds = calibration_batches(card, 1, seed=2)[0]
    made: list[Variant] = []
    speed: dict[str, float] = {}
    for precision in precisions:
        path, this_recipe = source, dict[str, Any](recipe)
        if precision == "int8":
            path = directory / OPENVINO_INT8_XML_FILE
            this_recipe = quantize_openvino_int8(
                onnx_path, path, card, scope=int8_scope, calibration_images=calibration_images
            )
        cache = None if cache_dir is None else cache_dir / f"{path.name}-{precision}"
        predictor = OpenVinoPredictor(path, precision=precision, threads=threads, cache_dir=cache)
        this_recipe["inference_precision"] = predictor.inference_precision
        gate = measure_gate(
            reference,
            predictor,
            card,
            reference_name=f"onnxruntime fp32 {ONNX_FILE}",
            runtime_version=f"openvino {openvino_version()}",
            trained=trained,
        )
        speed[precision] = time_predictor(predictor, feeds)
        this_recipe["timed_ms"] = round(speed[precision] * 1e3, 2)
        this_recipe["fp32_sha256"] = file_sha256(onnx_path)
        predictor.close()
        variant = Variant("openvino", precision, path.name, gate, this_recipe)
        if precision == "int8" and "bf16" in speed and not keep_slower_int8:
            if speed["int8"] >= speed["bf16"]:
                echo(
                    f"openvino int8 ({speed['int8'] * 1e3:.1f} ms) is not faster than bf16 "
                    f"({speed['bf16'] * 1e3:.1f} ms) on this machine: not kept"
                )
                path.unlink(missing_ok=True)
                (directory / openvino_weights_file(path.name)).unlink(missing_ok=True)
                continue
        record_variant(directory, variant)
        made.append(variant)
    return made
