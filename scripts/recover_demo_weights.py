"""Recover a demo model's inference weights from its ``model.onnx`` into ``model.safetensors``.

The bundled demo models were published as ONNX only and their training checkpoints are gone.
Every tensor the inference graph uses is an initializer of that graph, either under its
parameter name (``model.<name>``) or transformed by the exporter; this script undoes each
transformation exactly (no arithmetic but a transpose, so the recovered values are bit-equal):

* ``Linear``: ``MatMul(x, W^T)`` followed by ``Add(model.<prefix>.bias)`` -> ``<prefix>.weight``;
* ``BatchNorm``: the node's five inputs (the exporter merged equal tensors under one name);
* the rest, by order of appearance in the graph (which is the order of execution): rows of
  ``level_embed`` tensors, the affine weights of the pixel decoder's GroupNorms (InstanceNorm +
  ``Mul`` + ``Add``), and the decoder's query embeddings (``Tile``).

The training-only tensors (CLIP refiner, its projection heads, the box head) are not in the
graph and are not written (``models.checkpoint`` loads a checkpoint without them). The result is
then checked: PyTorch with the recovered weights against the shipped ONNX graph through the
shared post-processing (``export.parity``), soft mask max |diff| <= ``--tolerance``.

    python scripts/recover_demo_weights.py model_repository/salient [more task dirs]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import load as onnx_load
from onnx import numpy_helper

from models.build import build_focus
from models.checkpoint import is_training_only, save_inference_weights
from models.config import ModelCard
from models.contract import ONNX_FILE, WEIGHTS_FILE

PREFIX = "model."  # the export wrapper holds the network as ``self.model``

# Module paths filled by order of appearance (see the module docstring); each list is in the
# order the network runs them (models/pixel_decoder.py, models/transformer_decoder.py).
GROUP_NORMS = (
    "sem_seg_head.pixel_decoder.input_proj.0.1",
    "sem_seg_head.pixel_decoder.input_proj.1.1",
    "sem_seg_head.pixel_decoder.input_proj.2.1",
    "sem_seg_head.pixel_decoder.adapter_1.norm",
    "sem_seg_head.pixel_decoder.layer_1.norm",
)
QUERY_TILES = (
    "sem_seg_head.predictor.query_embed.weight",
    "sem_seg_head.predictor.query_feat.weight",
)


class RecoveryError(RuntimeError):
    """The graph does not hold a tensor the network needs, or holds one twice."""


def recover_state(onnx_path: Path, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inference state dict of ``target``'s network, read from the graph at ``onnx_path``."""
    graph = onnx_load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in graph.node:
        for slot, name in enumerate(node.input):
            consumers[name].append((node, slot))
    found: dict[str, np.ndarray] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key in found and not np.array_equal(found[key], value):
            raise RecoveryError(f"{key}: two different tensors in the graph")
        found[key] = value

    for name, value in inits.items():
        if name.startswith(PREFIX) and name[len(PREFIX):] in target:
            put(name[len(PREFIX):], value)
    ordered: dict[str, list[np.ndarray]] = defaultdict(list)
    for node in graph.node:
        ins = list(node.input)
        if node.op_type == "BatchNormalization":
            prefix = ins[1][len(PREFIX):].rsplit(".", 1)[0]
            for slot, field in enumerate(("weight", "bias", "running_mean", "running_var"), 1):
                put(f"{prefix}.{field}", inits[ins[slot]])
            continue
        if node.op_type == "MatMul" and ins[1] in inits and not ins[1].startswith(PREFIX):
            for after, _ in consumers[node.output[0]]:
                bias = [x for x in after.input if x.startswith(PREFIX) and x.endswith(".bias")]
                if after.op_type == "Add" and bias:
                    put(bias[0][len(PREFIX):-len(".bias")] + ".weight", inits[ins[1]].T)
            continue
        const = [x for x in ins if x in inits and not x.startswith(PREFIX)]
        if not const or inits[const[0]].dtype != np.float32:
            continue
        value = inits[const[0]]
        if node.op_type == "Add" and const[0].startswith("select"):
            ordered["backbone.level_embed"].append(value)
        elif node.op_type == "Add" and value.shape[:2] == (1, 1):
            ordered["sem_seg_head.pixel_decoder.transformer.level_embed"].append(value.reshape(-1))
        elif node.op_type == "Add" and value.ndim == 3 and value.shape[::2] == (1, 1):
            ordered["sem_seg_head.predictor.level_embed.weight"].append(value.reshape(-1))
        elif node.op_type in ("Mul", "Add") and value.ndim == 3 and value.shape[1:] == (1, 1):
            ordered["group_norm"].append(value.reshape(-1))
        elif node.op_type == "Tile" and value.ndim == 3:
            ordered["tiles"].append(value[:, 0, :])
    for key in ("backbone.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed",
                "sem_seg_head.predictor.level_embed.weight"):
        put(key, np.stack(ordered[key]))
    norms = ordered["group_norm"]
    if len(norms) != 2 * len(GROUP_NORMS):
        raise RecoveryError(
            f"expected {2 * len(GROUP_NORMS)} GroupNorm affines, found {len(norms)}"
        )
    for i, module in enumerate(GROUP_NORMS):
        put(f"{module}.weight", norms[2 * i])
        put(f"{module}.bias", norms[2 * i + 1])
    if len(ordered["tiles"]) != len(QUERY_TILES):
        raise RecoveryError(f"expected {len(QUERY_TILES)} query embeddings")
    for key, value in zip(QUERY_TILES, ordered["tiles"], strict=True):
        put(key, value)

    state: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        if is_training_only(key):
            continue
        if key.endswith("num_batches_tracked"):  # not in the graph; unused in eval mode
            state[key] = torch.zeros_like(ref)
            continue
        if key not in found:
            raise RecoveryError(f"{key} {tuple(ref.shape)} not found in {onnx_path}")
        value = torch.from_numpy(np.array(found[key], copy=True))
        if tuple(value.shape) != tuple(ref.shape):
            raise RecoveryError(f"{key}: graph {tuple(value.shape)} vs network {tuple(ref.shape)}")
        state[key] = value
    return state


def recover(task_dir: Path, tolerance: float) -> str:
    """Write ``task_dir/model.safetensors`` if its parity with ``model.onnx`` holds."""
    from export.parity import Tolerance, measure_parity, onnxruntime_predictor, torch_predictor

    card = ModelCard.load(task_dir)
    model = build_focus(card.config).eval()
    state = recover_state(task_dir / ONNX_FILE, model.state_dict())
    model.load_state_dict(state, strict=False)
    report = measure_parity(
        onnxruntime_predictor(task_dir / ONNX_FILE, threads=1),
        torch_predictor(model),
        card,
        Tolerance("recovered", soft_max_abs=tolerance),
    )
    if not report.ok:
        raise RecoveryError(f"{task_dir}: recovered weights fail parity: {report.summary()}")
    save_inference_weights(model, task_dir / WEIGHTS_FILE, card)
    size = (task_dir / WEIGHTS_FILE).stat().st_size
    written = f"{task_dir / WEIGHTS_FILE}: {len(state)} tensors, {size / 1e6:.1f} MB"
    return f"{written}; {report.summary()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task_dirs", nargs="+", type=Path, help="model directories")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="soft mask max |diff|")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for task_dir in args.task_dirs:
        started = time.perf_counter()
        try:
            print(f"{recover(task_dir, args.tolerance)} ({time.perf_counter() - started:.0f} s)")
        except RecoveryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
