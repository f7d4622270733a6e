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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from export.graph import (
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
    return program.model


def _save(model: Any, card: ModelCard, out_path: Path) -> Path:
    """Set the card, check and write ``model`` (onnx_ir) to ``out_path`` atomically."""
    import onnx
    import onnx_ir as ir

    model.metadata_props.clear()
    model.metadata_props[METADATA_KEY] = card.to_json()
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    data_name = external_data_file(out_path.name)
    if weights > EXTERNAL_DATA_BYTES:
        ir.save(model, tmp, external_data=data_name)
        onnx.checker.check_model(str(tmp), full_check=False)
        os.replace(tmp.with_name(data_name), out_path.with_name(data_name))
    else:
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
    os.replace(tmp, out_path)
    return out_path


def export_onnx(
    model: nn.Module, card: ModelCard, out_path: str | Path, opset: int = 18, fp16: bool = False
) -> Path:
    """Trace ``model`` with dynamic batch/height/width and write ``out_path``.

    With ``fp16`` the written graph has fp16 weights and compute (float32 I/O), derived from
    the fp32 trace.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model_ir = trace(model, card, opset)
    simplify(model_ir)
    leaked = training_only_initializers(model_ir.graph.initializers)
    if leaked:
        raise RuntimeError(f"training-only weights reached the ONNX graph: {leaked[:10]}")
    if fp16:
        fp32 = out_path.with_name(f".{out_path.stem}.fp32.onnx")
        try:
            _save(model_ir, card, fp32)
            derive_fp16(fp32, out_path)
        finally:
            fp32.unlink(missing_ok=True)
    else:
        _save(model_ir, card, out_path)
    logger.info("wrote %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path


def derive_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Write the fp16 version (float32 I/O, same metadata) of an exported fp32 graph."""
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
    onnx.checker.check_model(proto)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, out_path)
    return out_path


def export_checkpoint(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    opset: int = 18,
    fp16: bool = False,
    parity: bool = True,
) -> dict[str, Any]:
    """``focus export onnx``: checkpoint directory -> ``out_path`` + ``focus.json`` beside it.

    The fp32 graph is checked against PyTorch (soft-mask max |diff| <= 1e-4); with ``fp16``
    the fp16 graph too (mean |diff| <= 1e-2, binary IoU >= 0.99). On failure the graph is kept
    as ``<out>.parity-failed`` and :class:`export.parity.ParityError` is raised: nothing that
    failed parity is ever left where a model repository would pick it up.
    """
    from export.parity import FP16, FP32, check_parity, onnxruntime_predictor, torch_predictor
    from models.checkpoint import load_checkpoint

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model, card = load_checkpoint(checkpoint)
    staging = out_path.with_name(f".{out_path.stem}.staging.onnx")
    staging16 = out_path.with_name(f".{out_path.stem}.staging16.onnx")
    reports: dict[str, Any] = {}
    try:
        export_onnx(model, card, staging, opset=opset)
        if parity:
            reference = torch_predictor(model)
            reports["fp32"] = check_parity(
                reference, onnxruntime_predictor(staging), card, FP32, what=f"{out_path} (fp32)"
            ).to_dict()
        final = staging
        if fp16:
            derive_fp16(staging, staging16)
            if parity:
                reports["fp16"] = check_parity(
                    reference,
                    onnxruntime_predictor(staging16),
                    card,
                    FP16,
                    what=f"{out_path} (fp16)",
                ).to_dict()
            final = staging16
    except BaseException as exc:
        failed = staging16 if staging16.is_file() else staging
        if isinstance(exc, AssertionError) and failed.is_file():  # ParityError: keep for study
            shutil.move(failed, out_path.with_name(out_path.name + ".parity-failed"))
        for path in (staging16, staging):
            path.unlink(missing_ok=True)
        raise
    os.replace(final, out_path)
    if final != staging:
        staging.unlink(missing_ok=True)
    card.save(out_path.parent)
    size = out_path.stat().st_size
    logger.info("wrote %s (%.1f MB) and %s", out_path, size / 1e6, out_path.parent / CARD_FILE)
    return {
        "onnx": str(out_path),
        "bytes": size,
        "precision": "fp16" if fp16 else "fp32",
        "parity": reports,
    }
