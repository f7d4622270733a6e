"""Per-module time of one FOCUS forward in PyTorch, ONNX Runtime and OpenVINO.

Every runtime's time is attributed to the module path that produced it (``backbone.blocks.3.attn``)
and summed into the stages of :data:`STAGES`:

* PyTorch: forward pre/post hooks on every module, exclusive time per module (a stack, so the
  ViT blocks called through a slice of ``backbone.blocks`` count as themselves);
* ONNX Runtime: ``SessionOptions.enable_profiling`` (per node ``dur``), node names carry the
  module path (``export.graph.name_nodes_by_module``);
* OpenVINO: per-layer ``PERF_COUNT`` (``real_time`` of each executed layer; fused layers keep the
  name of one of the ONNX nodes they came from).

Used by ``benchmarks/cpu_precision.py --profile``.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (stage, regex on the module path); the first match wins, so finer stages come first.
STAGES: tuple[tuple[str, str], ...] = (
    ("ViT blocks", r"^backbone\.blocks\.\d+"),
    ("ViT patch embed", r"^backbone\.patch_embed"),
    ("edge prior (ResNet)", r"^backbone\.edge(\.|$)"),
    ("adapter deform. sampling", r"^backbone\.interactions\..*\.attn$"),
    ("adapter deform. projections", r"^backbone\.interactions\..*\.attn\.\w+$"),
    ("adapter FFN, norms", r"^backbone\.interactions\."),
    ("backbone tail (up, BN, resize)", r"^backbone(\.|$)"),
    ("pixel dec. deform. sampling", r"^sem_seg_head\.pixel_decoder\..*self_attn$"),
    ("pixel dec. deform. projections", r"^sem_seg_head\.pixel_decoder\..*self_attn\.\w+$"),
    ("pixel dec. encoder FFN, norms", r"^sem_seg_head\.pixel_decoder\.transformer"),
    ("pixel dec. FPN, mask features", r"^sem_seg_head\.pixel_decoder(\.|$)"),
    ("transformer decoder", r"^sem_seg_head\.predictor"),
)
OTHER = "other (outputs, shapes)"
_COMPILED = [(name, re.compile(pattern)) for name, pattern in STAGES]


def stage_of(module_path: str) -> str:
    """The stage a module path belongs to (``OTHER`` for the top level)."""
    for name, pattern in _COMPILED:
        if pattern.search(module_path):
            return name
    return OTHER


def stage_names() -> list[str]:
    return [name for name, _ in STAGES] + [OTHER]


def _sum_by_stage(times: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for path, seconds in times.items():
        out[stage_of(path)] += seconds
    return dict(out)


# ----------------------------------------------------------------------------- PyTorch


def torch_profile(model: Any, run: Callable[[], object]) -> dict[str, float]:
    """Seconds per stage of one ``run()`` of ``model``, from exclusive per-module hook times."""
    stack: list[list[float]] = []  # [start, time of children]
    exclusive: dict[str, float] = defaultdict(float)
    handles = []

    def pre(_module: Any, _args: Any) -> None:
        stack.append([time.perf_counter(), 0.0])

    def post_for(path: str) -> Callable[..., None]:
        def post(_module: Any, _args: Any, _out: Any) -> None:
            start, children = stack.pop()
            inclusive = time.perf_counter() - start
            exclusive[path] += inclusive - children
            if stack:
                stack[-1][1] += inclusive

        return post

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post_for(path)))
    try:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    stages = _sum_by_stage(exclusive)
    stages[OTHER] = stages.get(OTHER, 0.0) + max(0.0, total - sum(exclusive.values()))
    return stages


# ----------------------------------------------------------------------------- ONNX Runtime


def onnxruntime_profile(
    onnx_path: Path, feeds: dict[str, Any], threads: int, workdir: Path
) -> dict[str, float]:
    """Seconds per stage of one run (after a warm-up) from ONNX Runtime's node profile."""
    import onnxruntime as ort

    from export.graph import node_module

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    workdir.mkdir(parents=True, exist_ok=True)
    options.profile_file_prefix = str(workdir / "ort_profile")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up (its events are dropped below)
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    by_output = _modules_by_output(onnx_path)
    runs = [e for e in events if e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    times: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["ts"] < last_start:
            continue
        node = e["name"][: -len("_kernel_time")]
        # ONNX Runtime's NCHWc layout pass names its convolutions after their output tensor.
        module = node_module(node) or by_output.get(node.removesuffix("_nchwc"), "")
        times[module] += e["dur"] / 1e6
    return _sum_by_stage(times)


def _modules_by_output(onnx_path: Path) -> dict[str, str]:
    """Output tensor name -> module path of the node that makes it (graph only, no weights)."""
    import onnx

    from export.graph import node_module

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {out: node_module(n.name) for n in graph.node for out in n.output}


# ----------------------------------------------------------------------------- OpenVINO


def openvino_profile(compiled: Any, feeds: dict[str, Any]) -> dict[str, float]:
    """Seconds per stage of one inference of a model compiled with ``PERF_COUNT``."""
    from export.graph import node_module

    request = compiled.create_infer_request()
    request.infer(feeds)  # warm-up
    request.infer(feeds)
    times: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        if str(info.status).endswith("NOT_RUN"):
            continue
        times[node_module(info.node_name)] += info.real_time.total_seconds()
    return _sum_by_stage(times)


def format_table(profiles: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows: one stage per line, ms (and share) per runtime column."""
    names = list(profiles)
    lines = [
        "| stage | " + " | ".join(f"{n} ms (%)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    totals = {n: sum(p.values()) or 1.0 for n, p in profiles.items()}
    for stage in stage_names():
        cells = []
        for n in names:
            t = profiles[n].get(stage, 0.0)
            cells.append(f"{t * 1e3:.0f} ({100 * t / totals[n]:.0f})")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{totals[n] * 1e3:.0f}" for n in names) + " |")
    return lines
