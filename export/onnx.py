"""Export a FOCUS network to ONNX (the contract in DESIGN.md).

Inputs ``image`` and ``edges`` float32 [N, 3, H, W] (normalised, padded to 32; the edge map);
outputs ``class_probs`` float32 [N, 2, 2] and ``mask_logits`` float32 [N, 2, H/4, W/4]; N, H and
W dynamic (H and W declared as multiples of 32, which the stride-32 level needs). The model card
is stored in the graph's metadata under ``focus.json``. The training-only CLIP refiner is never
traced: eval-mode forward does not call it, and :func:`export_onnx` asserts that none of its
weights reached the graph.

The trace (``torch.onnx.export(dynamo=True)``) is the slow part: minutes even for ``tiny`` on
two cores. Everything after it works on the traced graph: :func:`export.graph.simplify` (seconds)
and, for ``--fp16``, an fp16 copy derived from the fp32 graph (:func:`derive_fp16`), never a
second trace. :func:`export_checkpoint` is ``focus export onnx``: load, export, write
``focus.json`` beside the graph, and check parity against PyTorch (``export.parity``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from export.graph import (
    initializer_bytes,
    read_card,
    set_card,
    simplify,
    to_fp16,
    training_only_initializers,
)
from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    INPUT_NAMES,
    MAX_EXPORT_BATCH,
    MAX_INPUT_SIDE,
    METADATA_KEY,
    MIN_INPUT_SIDE,
    OUTPUT_NAMES,
    SIZE_DIVISOR,
    external_data_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OnnxWrapper",
    "dummy_inputs",
    "export_onnx",
    "derive_fp16",
    "export_checkpoint",
    "read_card",
    "data_companion",
    "install_graph",
    "parity_plan",
]

# protobuf's 2 GiB message limit; above it the weights go to ``<name>.data`` beside the graph
# (``giant`` in fp32).
EXTERNAL_DATA_BYTES = 1_800_000_000


class OnnxWrapper(nn.Module):
    """Eval-mode FOCUS with fixed input/output names and no data-dependent Python branches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(image, edges)


def dummy_inputs(card: ModelCard, batch: int = 2) -> tuple[Tensor, Tensor]:
    """Inputs at the card's short side with a non-square padded shape."""
    side = card.input_short_side
    h = -(-side // 32) * 32
    w = h + 64
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, h, w, generator=gen), torch.rand(batch, 3, h, w, generator=gen)


def trace(model: nn.Module, card: ModelCard, opset: int = 18) -> Any:
    """The dynamo trace as an ``onnx_ir.Model`` with dynamic batch/height/width (slow)."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization and TensorRT need >= 17")
    wrapper = OnnxWrapper(model).float().cpu().eval()
    inputs = dummy_inputs(card)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    cells = {"min": MIN_INPUT_SIDE // SIZE_DIVISOR, "max": MAX_INPUT_SIDE // SIZE_DIVISOR}
    h32 = torch.export.Dim("h32", **cells)
    w32 = torch.export.Dim("w32", **cells)
    spatial = {0: batch, 2: SIZE_DIVISOR * h32, 3: SIZE_DIVISOR * w32}
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            inputs,
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"image": spatial, "edges": spatial},
            optimize=False,  # the onnxscript rewriter takes minutes; export.graph.simplify instead
            verbose=False,
        )
    if program is None:  # only the legacy TorchScript exporter (dynamo=False) returns None
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model


def uses_external_data(weights_bytes: int, external_data: bool | None) -> bool:
    """``external_data`` when given, else whether the weights exceed :data:`EXTERNAL_DATA_BYTES`."""
    return weights_bytes > EXTERNAL_DATA_BYTES if external_data is None else external_data


def data_companion(onnx_path: str | Path) -> Path:
    """``.../model.onnx`` -> ``.../model.onnx.data`` (the contract's external-data file)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(external_data_file(onnx_path.name))


def artefact_bytes(onnx_path: str | Path) -> int:
    """Size of a graph plus its external data, if it has any."""
    data = data_companion(onnx_path)
    return Path(onnx_path).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def install_graph(source: Path, target: Path) -> None:
    """Move ``source`` (and its ``.data``) to ``target``; a stale ``target.data`` goes.

    The data file moves first, so a reader that sees the new graph finds its weights; the
    graph names its data file relatively, so ``source`` must already be named like ``target``.
    """
    if source.name != target.name and data_companion(source).is_file():
        raise ValueError(f"{source}: external data is named after {source.name}, not {target.name}")
    if data_companion(source).is_file():
        os.replace(data_companion(source), data_companion(target))
    else:
        data_companion(target).unlink(missing_ok=True)
    os.replace(source, target)


def _save(model: Any, card: ModelCard, out_path: Path, external_data: bool | None) -> Path:
    """Set the card, check and write ``model`` (onnx_ir) to ``out_path`` (+ ``.data``)."""
    import onnx
    import onnx_ir as ir

    model.metadata_props.clear()
    model.metadata_props[METADATA_KEY] = card.to_json()
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    if uses_external_data(weights, external_data):
        # Every initializer over 1 KiB goes to ``<name>.data``, written beside ``tmp`` under the
        # final name (the graph records it relatively); the checker then reads the pair.
        ir.save(
            model, tmp, external_data=external_data_file(out_path.name), size_threshold_bytes=1024
        )
        onnx.checker.check_model(str(tmp), full_check=False)
    else:
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
        data_companion(out_path).unlink(missing_ok=True)  # a stale pair's weights
    os.replace(tmp, out_path)
    return out_path


def export_onnx(
    model: nn.Module,
    card: ModelCard,
    out_path: str | Path,
    opset: int = 18,
    fp16: bool = False,
    external_data: bool | None = None,
    timings: dict[str, float] | None = None,
) -> Path:
    """Trace ``model`` with dynamic batch/height/width and write ``out_path``.

    With ``fp16`` the written graph has fp16 weights and compute (float32 I/O), derived from
    the fp32 trace. ``external_data``: None = only when the weights exceed protobuf's limit
    (``giant``), True = always (``out_path`` + ``<name>.data``), False = never. ``timings``,
    when given, receives the seconds of each stage (trace, simplify, save).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    timings = {} if timings is None else timings
    start = time.perf_counter()
    model_ir = trace(model, card, opset)
    timings["trace_s"] = time.perf_counter() - start
    start = time.perf_counter()
    simplify(model_ir)
    timings["simplify_s"] = time.perf_counter() - start
    leaked = training_only_initializers(model_ir.graph.initializers)
    if leaked:
        raise RuntimeError(f"training-only weights reached the ONNX graph: {leaked[:10]}")
    start = time.perf_counter()
    if fp16:
        scratch = out_path.with_name(f".{out_path.name}.fp32")  # holds the fp32 pair
        scratch.mkdir(exist_ok=True)
        try:
            fp32 = _save(model_ir, card, scratch / out_path.name, external_data)
            del model_ir
            derive_fp16(fp32, out_path, external_data=external_data)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        _save(model_ir, card, out_path, external_data)
    timings["save_s"] = time.perf_counter() - start
    logger.info("wrote %s (%.1f MB)", out_path, artefact_bytes(out_path) / 1e6)
    return out_path


def derive_fp16(
    fp32_path: str | Path, out_path: str | Path, external_data: bool | None = None
) -> Path:
    """Write the fp16 version (float32 I/O, same metadata) of an exported fp32 graph.

    ``external_data`` as in :func:`export_onnx` (None: only when the fp16 weights exceed
    protobuf's limit).
    """
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    proto = onnx.load(str(fp32_path))
    card = next(
        (ModelCard.from_json(e.value) for e in proto.metadata_props if e.key == METADATA_KEY), None
    )
    if card is None:
        raise ValueError(f"{fp32_path}: no {METADATA_KEY!r} metadata")
    proto = to_fp16(proto)
    set_card(proto, card)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    if uses_external_data(initializer_bytes(proto), external_data):
        onnx.save_model(
            proto,
            str(tmp),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external_data_file(out_path.name),
            size_threshold=1024,
        )
        onnx.checker.check_model(str(tmp))
    else:
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
        data_companion(out_path).unlink(missing_ok=True)
    os.replace(tmp, out_path)
    return out_path


# Parity images of ``focus export onnx``: the full set (2 sizes x 4 images, batch 1 and 4) for
# models up to this many inference parameters (``small``: 71 M, ``base``); above it (``large``:
# 374 M, ``giant``: 1.1 B) one landscape image pair at batch 1 and 2, i.e. 4 forwards per side
# instead of 16 (minutes, not tens of them, on a 2-core CPU; the batched run still checks that
# images of one batch stay independent).
FULL_PARITY_MAX_PARAMS = 150_000_000
REDUCED_PARITY_IMAGES = 2


def parity_plan(model: nn.Module) -> tuple[list[list[Any]] | None, str]:
    """(parity image groups, or None for the default set; a sentence saying which)."""
    from export.parity import BATCH, DEFAULT_SIZES, parity_images

    params = sum(  # what the graph computes with: the training-only CLIP refiner excluded
        p.numel() for n, p in model.named_parameters() if not training_only_initializers([n])
    )
    if params <= FULL_PARITY_MAX_PARAMS:
        return None, f"{len(DEFAULT_SIZES) * BATCH} images at batch 1 and {BATCH}"
    group = parity_images(DEFAULT_SIZES[:1])[0][:REDUCED_PARITY_IMAGES]
    h, w = DEFAULT_SIZES[0]
    return [group], (
        f"{len(group)} images ({h}x{w}) at batch 1 and {len(group)}, reduced for a model of "
        f"{params / 1e6:.0f} M inference parameters (> {FULL_PARITY_MAX_PARAMS / 1e6:.0f} M)"
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _keep_failed(failed: Path, out_path: Path) -> None:
    """Keep a graph that failed parity as ``<out>.parity-failed`` (a folder for a .data pair)."""
    kept = out_path.with_name(out_path.name + ".parity-failed")
    if kept.is_dir():
        shutil.rmtree(kept)
    if data_companion(failed).is_file():
        kept.mkdir()
        install_graph(failed, kept / out_path.name)
    else:
        shutil.move(failed, kept)


def export_checkpoint(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    opset: int = 18,
    fp16: bool = False,
    parity: bool = True,
    external_data: bool | None = None,
) -> dict[str, Any]:
    """``focus export onnx``: checkpoint directory -> ``out_path`` + ``focus.json`` beside it.

    The fp32 graph is checked against PyTorch (soft-mask max |diff| <= 1e-4); with ``fp16``
    the fp16 graph too (mean |diff| <= 1e-2, binary IoU >= 0.99), on the images
    :func:`parity_plan` picks (fewer for big models). On failure the graph is kept as
    ``<out>.parity-failed`` (a folder holding ``<out name>`` + ``.data`` for an external-data
    graph) and :class:`export.parity.ParityError` is raised: nothing that failed parity is ever
    left where a model repository would pick it up. Everything is staged in a hidden folder
    beside ``out_path`` under the final file name, since an external-data graph names its
    ``.data`` file relatively.
    """
    from models.checkpoint import load_checkpoint

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, card = load_checkpoint(checkpoint)
    timings: dict[str, float] = {"load_s": time.perf_counter() - started}
    images, parity_text = parity_plan(model)
    staging_dir = out_path.with_name(f".{out_path.name}.staging")
    shutil.rmtree(staging_dir, ignore_errors=True)
    (staging_dir / "fp16").mkdir(parents=True)
    staging, staging16 = staging_dir / out_path.name, staging_dir / "fp16" / out_path.name
    try:
        export_onnx(model, card, staging, opset=opset, external_data=external_data, timings=timings)
        start = time.perf_counter()
        reports = _check_parity(
            model, card, staging, staging16 if fp16 else None, images, out_path,
            parity=parity, external_data=external_data,
        )
        timings["parity_s"] = time.perf_counter() - start
        install_graph(staging16 if fp16 else staging, out_path)
    except BaseException as exc:
        failed = staging16 if staging16.is_file() else staging
        if isinstance(exc, AssertionError) and failed.is_file():  # ParityError: keep for study
            _keep_failed(failed, out_path)
        raise
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    card.save(out_path.parent)
    data = data_companion(out_path)
    size = artefact_bytes(out_path)
    logger.info("wrote %s (%.1f MB) and %s", out_path, size / 1e6, out_path.parent / CARD_FILE)
    return {
        "onnx": str(out_path),
        "external_data": str(data) if data.is_file() else None,
        "bytes": size,
        "precision": "fp16" if fp16 else "fp32",
        "parity": reports,
        "parity_images": parity_text if parity else "skipped",
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _check_parity(
    model: nn.Module,
    card: ModelCard,
    staging: Path,
    staging16: Path | None,
    images: list[list[Any]] | None,
    out_path: Path,
    *,
    parity: bool,
    external_data: bool | None,
) -> dict[str, Any]:
    """Parity of the staged fp32 graph against PyTorch and, with ``staging16``, derive the fp16
    graph there and check it too; returns the reports by precision (empty without ``parity``).
    Raises :class:`export.parity.ParityError` on a failure."""
    from export.parity import FP16, FP32, check_parity, onnxruntime_predictor, torch_predictor

    reports: dict[str, Any] = {}
    reference = torch_predictor(model) if parity else None
    if reference is not None:
        reports["fp32"] = check_parity(
            reference, onnxruntime_predictor(staging), card, FP32, images,
            what=f"{out_path} (fp32)",
        ).to_dict()
    if staging16 is not None:
        derive_fp16(staging, staging16, external_data=external_data)
        if reference is not None:
            reports["fp16"] = check_parity(
                reference, onnxruntime_predictor(staging16), card, FP16, images,
                what=f"{out_path} (fp16)",
            ).to_dict()
    return reports
