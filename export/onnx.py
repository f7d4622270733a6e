"""Export a FOCUS network to ONNX (the contract in DESIGN.md).

Inputs ``image`` and ``edges`` float32 [N, 3, H, W] (normalised, padded to 32; the edge map);
outputs ``class_probs`` float32 [N, 2, 2] and ``mask_logits`` float32 [N, 2, H/4, W/4]; N, H and
W dynamic (H and W declared as multiples of 32, which the stride-32 level needs). The model card
is stored in the graph's metadata under ``focus.json``. The training-only CLIP refiner is never
traced: eval-mode forward does not call it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from models.config import ModelCard

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image", "edges")
OUTPUT_NAMES = ("class_probs", "mask_logits")
METADATA_KEY = "focus.json"


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


def export_onnx(
    model: nn.Module, card: ModelCard, out_path: str | Path, opset: int = 18, fp16: bool = False
) -> Path:
    """Trace ``model`` with dynamic batch/height/width and write ``out_path`` (single file)."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = OnnxWrapper(model).float().cpu()
    inputs = dummy_inputs(card)
    batch = torch.export.Dim("batch", min=1, max=64)
    h32 = torch.export.Dim("h32", min=2, max=256)
    w32 = torch.export.Dim("w32", min=2, max=256)
    spatial = {0: batch, 2: 32 * h32, 3: 32 * w32}
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
            optimize=False,  # onnxscript rewrites take minutes; ONNX Runtime optimises at load
            verbose=False,
        )
    proto = program.model_proto
    if fp16:
        proto = _to_fp16(proto)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    onnx.checker.check_model(proto)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(out_path)
    logger.info("wrote %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path


def _to_fp16(proto):
    """fp16 weights and compute with float32 graph inputs/outputs (keep_io_types)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)


def read_card(onnx_path: str | Path) -> ModelCard:
    """The model card stored in an exported graph's metadata."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return ModelCard.from_json(entry.value)
    raise ValueError(f"{onnx_path}: no {METADATA_KEY!r} metadata")
