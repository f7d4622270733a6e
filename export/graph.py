"""Torch-free operations on an exported FOCUS ONNX graph (needs only the ``onnx`` package).

* the model card in the graph metadata (``focus.json``): :func:`set_card`, :func:`read_card`;
* :func:`simplify`: names every node after the module that made it (``backbone.blocks.3.attn/
  node_matmul_12``, so ONNX Runtime and OpenVINO profiles read per module), strips the dynamo
  exporter's debug metadata, folds constants (which removes the sequence ops TensorRT lacks)
  and deduplicates initializers, in seconds;
* :func:`node_module`: the module path in such a node name;
* :func:`to_fp16`: fp16 weights and compute with float32 graph inputs and outputs, derived from
  the fp32 graph (no second trace);
* :func:`training_only_initializers`: names of weights of the training-only CLIP refiner,
  which must never be part of an inference graph;
* :func:`op_types` and :func:`default_opset`: what the graph is made of, for TensorRT checks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from models.config import ModelCard
from models.contract import METADATA_KEY

logger = logging.getLogger(__name__)

# Prefixes of the training-only modules' parameters (DESIGN "The model", STYLE 7).
TRAINING_ONLY_MARKERS = ("clip_refiner", "text_embed", "image_embed")


def set_card(proto: Any, card: ModelCard) -> None:
    """Replace the graph's metadata with ``focus.json`` = ``card``."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()


def read_card(onnx_path: str | Path) -> ModelCard:
    """The model card stored in an exported graph's metadata."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return ModelCard.from_json(entry.value)
    raise ValueError(f"{onnx_path}: no {METADATA_KEY!r} metadata")


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's per-node module path
SCOPE_SEPARATOR = "/"
WRAPPER_PREFIX = "model."  # export.onnx.OnnxWrapper holds the network as ``.model``


def name_nodes_by_module(model: Any) -> int:
    """Prefix each node's name with the path of the module that emitted it; returns how many.

    The exporter records the module stack of every node in its metadata (``['', 'model',
    'model.backbone', ..., 'model.backbone.blocks.3.attn', 'linear_12']``: the last entry is
    the op, and the wrapper's ``model.`` is dropped).
    Names survive into ONNX Runtime's profile and OpenVINO's per-layer counters, which is what
    a per-module profile needs once the metadata is gone.
    """
    renamed = 0
    for node in model.graph.all_nodes():
        text = node.metadata_props.get(SCOPE_KEY)
        if not text or SCOPE_SEPARATOR in (node.name or ""):
            continue
        scopes = [s.strip(" '\"") for s in text.strip("[]").split(",")]
        modules = [s.removeprefix(WRAPPER_PREFIX) for s in scopes[:-1] if s]
        # '_empty_nn_module_stack_from_metadata_hook' and the like are the exporter's, not ours
        modules = [s for s in modules if s and s != WRAPPER_PREFIX.rstrip(".") and s[0] != "_"]
        if modules:
            node.name = f"{modules[-1]}{SCOPE_SEPARATOR}{node.name}"
            renamed += 1
    return renamed


def node_module(node_name: str) -> str:
    """``backbone.blocks.3.attn/node_matmul_12`` -> ``backbone.blocks.3.attn`` ('' if none).

    Split at the first separator: runtimes append their own suffixes to fused or decomposed
    nodes (OpenVINO: ``.../node_linear_12/WithoutBiases``); exporter node names (``node_*``)
    never contain one.
    """
    head, sep, _ = node_name.partition(SCOPE_SEPARATOR)
    return head if sep and not head.startswith("node_") else ""


def simplify(model: Any) -> None:
    """Clean up an ``onnx_ir.Model`` from the dynamo exporter, in place, in seconds.

    The exporter's output (``optimize=False``) carries per-node debug metadata (stack traces,
    FX node text: more than half of the file), one constant per use site, and ``torch.split``
    as ``SplitToSequence``/``SequenceAt``, which TensorRT cannot import. Constant folding with
    shape inference turns the split sequences into plain ``Split`` outputs; then unused nodes
    go, constants become (deduplicated) initializers and common subexpressions are merged. The
    onnxscript pattern rewriter (``optimize=True``'s slow part: ~1 minute for ``tiny`` on two
    cores, ~5% fewer nodes) is not run.
    """
    import onnx_ir.passes.common as common
    from onnx_ir import passes
    from onnxscript.optimizer import _constant_folding

    def fold() -> Any:
        return _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
        )

    name_nodes_by_module(model)
    pipeline = passes.Sequential(
        common.ClearMetadataAndDocStringPass(),
        fold(),
        common.RemoveUnusedNodesPass(),
        fold(),  # the first round exposes more constant shapes (split sizes of each level)
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
    )
    pipeline(model)


def to_fp16(proto: Any) -> Any:
    """fp16 weights and compute, float32 graph inputs/outputs (``keep_io_types``).

    Uses ONNX Runtime's converter; ops it knows to be unsafe in fp16 stay in fp32 with casts.
    """
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    # The converter appends the input casts at the end of the node list; ONNX wants them sorted.
    model = ir.serde.deserialize_model(converted)
    TopologicalSortPass()(model)
    return ir.serde.serialize_model(model)


def training_only_initializers(names: Iterable[str]) -> list[str]:
    """The initializer names (of a graph) that belong to the training-only CLIP refiner."""
    return sorted(n for n in names if any(marker in n for marker in TRAINING_ONLY_MARKERS))


def op_types(proto: Any) -> Counter[tuple[str, str]]:
    """(domain, op_type) -> count over the graph and its subgraphs ('' = the ONNX domain)."""
    counts: Counter[tuple[str, str]] = Counter()
    for g in _graphs(proto.graph):
        for node in g.node:
            counts[(node.domain or "", node.op_type)] += 1
    return counts


def default_opset(proto: Any) -> int:
    """The graph's opset of the default ONNX domain."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the graph imports no default-domain opset")


def initializer_bytes(proto: Any) -> int:
    """Total size of the initializers' tensor data."""
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in proto.graph.initializer)
