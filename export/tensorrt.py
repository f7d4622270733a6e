"""Build a TensorRT engine from an exported FOCUS ONNX graph (TensorRT 10 Python API), torch-free.

    focus export tensorrt --onnx model.onnx --out model.engine [--fp16|--bf16] [--max-batch B]
                          [--workspace GB] [--shapes min=HxW,opt=HxW,max=HxW] [--timing-cache F]

Steps: check that TensorRT imports and a CUDA device is visible (a clear error otherwise);
check the graph is TensorRT-friendly (opset >= 17, only operators of the onnx-tensorrt support
matrix; skipped when the ``onnx`` package is absent, as in the GPU image, where the parser
reports the same); parse it with ``trt.OnnxParser``; one optimisation profile over batch
1..B and the padded shapes the pre-processing produces; a workspace memory-pool limit; a
persistent timing cache; build with ``build_serialized_network``; write the engine and
``model.engine.json`` (``gpu_name``, ``tensorrt_version``, ``precision``, ``max_batch``,
``profile``: what ``service.backends.tensorrt`` checks before loading it); finally check the
engine's masks against ONNX Runtime's with the reduced-precision tolerances (even an fp32
engine may use TF32), raising :class:`export.parity.ParityError` with the numbers on failure.

Precision: TensorRT 10 builds "weakly typed" networks where ``BuilderFlag.FP16``/``BF16``
allow reduced-precision kernels. TensorRT 11 removed those flags: networks are strongly typed,
so for ``--fp16`` the graph is first converted to fp16 (float32 I/O, as ``export onnx --fp16``
does) and parsed with ``STRONGLY_TYPED``; ``--bf16`` then needs a bf16 graph and is refused.

The profile spans every padded shape the pre-processing can give: each side from 64 (the
export's smallest, two stride-32 cells) up to the card's ``max_size`` rounded up to 32, since
one very wide image has a short side well under ``short_side``. Optimised for a 4:3 landscape
photo at ``short_side``. ``--shapes`` narrows it (less activation memory for big presets:
TensorRT sizes the activation memory for the profile's max shape).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import ModelCard
from models.contract import (
    CARD_FILE,
    INPUT_NAMES,
    METADATA_KEY,
    MIN_INPUT_SIDE,
    BackendUnavailableError,
    EngineSidecar,
    write_atomic,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
MIN_OPSET = 17
MIN_SIDE = MIN_INPUT_SIDE

# ONNX operators TensorRT 10 imports (onnx-tensorrt docs/operators.md, "Supported: Y", TensorRT
# 10.0, opsets 9..20). Restrictions that matter for FOCUS are checked in `graph_problems`.
TENSORRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
    LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
# The support matrix lists nearest and linear, but the importer (onnxOpImporters.cpp, Resize) also
# maps "cubic" to InterpolationMode::kCUBIC on the two innermost axes: the ViT's bicubic
# position-embedding resize of an NCHW grid.
RESIZE_MODES = ("nearest", "linear", "cubic")
RESIZE_COORDINATE_MODES = (
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
)
# Inputs that the onnx-tensorrt importer needs as build-time constants: (op, input index).
CONSTANT_INPUTS = {("Slice", 3), ("Pad", 3), ("CumSum", 1)}


class TensorRTUnavailableError(RuntimeError):
    """TensorRT, cuda-python or a CUDA device is missing; the message says how to fix it."""


class GraphNotSupportedError(ValueError):
    """The ONNX graph uses something TensorRT cannot import."""


class EngineBuildError(RuntimeError):
    """TensorRT failed to parse the graph or to build the engine."""


# ----------------------------------------------------------------------------- the graph


def graph_problems(proto: Any) -> list[str]:
    """Why TensorRT 10 would refuse ``proto`` (empty when it is TensorRT-friendly)."""
    from export.graph import _graphs, default_opset

    problems = []
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}")
    constants = {i.name for i in proto.graph.initializer}
    for g in _graphs(proto.graph):
        constants |= {i.name for i in g.initializer}
        constants |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    for g in _graphs(proto.graph):
        for node in g.node:
            where = f"{node.op_type} node {node.name!r}"
            if node.domain not in ("", "ai.onnx"):
                problems.append(f"{where}: custom domain {node.domain!r}")
                continue
            if node.op_type not in TENSORRT_ONNX_OPS:
                problems.append(f"{where}: not supported by TensorRT's ONNX parser")
                continue
            attrs = {a.name: a for a in node.attribute}
            if node.op_type == "Resize":
                mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
                ctm = (
                    attrs["coordinate_transformation_mode"].s.decode()
                    if "coordinate_transformation_mode" in attrs
                    else "half_pixel"
                )
                if mode not in RESIZE_MODES:
                    problems.append(f"{where}: mode {mode!r} (TensorRT: {RESIZE_MODES})")
                if ctm not in RESIZE_COORDINATE_MODES:
                    problems.append(f"{where}: coordinate_transformation_mode {ctm!r}")
                if "antialias" in attrs and attrs["antialias"].i:
                    problems.append(f"{where}: antialias is not supported")
            if node.op_type == "LayerNormalization" and any(node.output[1:]):
                problems.append(f"{where}: only output Y is supported")
            for op, index in CONSTANT_INPUTS:
                if node.op_type == op and len(node.input) > index and node.input[index]:
                    if node.input[index] not in constants:
                        problems.append(f"{where}: input {index} must be a constant")
    return problems


def check_graph(onnx_path: str | Path) -> None:
    """Raise :class:`GraphNotSupportedError` listing every problem; no-op without ``onnx``."""
    try:
        import onnx
    except ImportError:
        logger.info("onnx not installed; leaving the operator check to TensorRT's parser")
        return
    proto = onnx.load(str(onnx_path), load_external_data=False)
    problems = graph_problems(proto)
    if problems:
        shown = "; ".join(problems[:20])
        raise GraphNotSupportedError(
            f"{onnx_path} is not TensorRT-friendly ({len(problems)} problems): {shown}"
        )


def load_card(onnx_path: str | Path) -> ModelCard:
    """``focus.json`` beside the graph, else the one in its metadata (read with ONNX Runtime)."""
    onnx_path = Path(onnx_path)
    beside = onnx_path.parent / CARD_FILE
    if beside.is_file():
        return ModelCard.load(beside)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if not text:
        raise ValueError(f"{onnx_path}: no focus.json beside it and none in its metadata")
    return ModelCard.from_json(text)


# ----------------------------------------------------------------------------- the profile


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of both inputs: [N, 3, H, W] at min / opt / max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def contains(self, shape: Sequence[int]) -> bool:
        return all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True))


def _round_up(value: float, divisor: int) -> int:
    return int(-(-int(round(value)) // divisor) * divisor)


def default_profile(card: ModelCard, max_batch: int, opt_batch: int | None = None) -> Profile:
    """Every padded shape ``models.processing`` can produce for ``card``, batch 1..max_batch."""
    d = card.size_divisibility
    short = _round_up(card.input_short_side, d)
    longest = max(_round_up(card.input_max_size, d), short)
    opt_long = min(_round_up(card.input_short_side * 4 / 3, d), longest)
    return make_profile(
        (MIN_SIDE, MIN_SIDE), (short, opt_long), (longest, longest), max_batch, opt_batch
    )


def make_profile(
    min_hw: tuple[int, int],
    opt_hw: tuple[int, int],
    max_hw: tuple[int, int],
    max_batch: int,
    opt_batch: int | None = None,
) -> Profile:
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt batch {opt_batch} is not within 1..{max_batch}")
    for name, (h, w) in (("min", min_hw), ("opt", opt_hw), ("max", max_hw)):
        if h % 32 or w % 32 or h < MIN_SIDE or w < MIN_SIDE:
            raise ValueError(f"{name} shape {h}x{w}: sides must be multiples of 32, >= {MIN_SIDE}")
    for axis in (0, 1):
        if not min_hw[axis] <= opt_hw[axis] <= max_hw[axis]:
            raise ValueError(
                f"shapes must satisfy min <= opt <= max, got {min_hw}, {opt_hw}, {max_hw}"
            )
    return Profile(min=(1, 3, *min_hw), opt=(opt_batch, 3, *opt_hw), max=(max_batch, 3, *max_hw))


def parse_shapes(text: str) -> dict[str, tuple[int, int]]:
    """``"min=64x64,opt=256x352,max=1024x1024"`` -> {"min": (64, 64), ...} (H x W)."""
    shapes: dict[str, tuple[int, int]] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("min", "opt", "max") or key in shapes:
            raise ValueError(f"--shapes: expected min=HxW,opt=HxW,max=HxW, got {text!r}")
        h, sep, w = value.lower().partition("x")
        if not sep or not h.isdigit() or not w.isdigit():
            raise ValueError(f"--shapes: {part!r} is not NAME=HxW")
        shapes[key] = (int(h), int(w))
    if set(shapes) != {"min", "opt", "max"}:
        raise ValueError(f"--shapes needs min, opt and max, got {text!r}")
    return shapes


# ----------------------------------------------------------------------------- environment


def import_tensorrt() -> Any:
    from models.runtime.tensorrt import import_tensorrt as _import

    try:
        return _import()
    except BackendUnavailableError as exc:
        raise TensorRTUnavailableError(str(exc)) from exc


def cuda_device_name(device_index: int = 0) -> str:
    """The CUDA device's name exactly as the service reads it (cuda-python's cudart)."""
    from models.runtime.tensorrt import import_cudart, running_gpu

    try:
        return running_gpu(import_cudart(), device_index)
    except BackendUnavailableError as exc:
        raise TensorRTUnavailableError(
            f"cannot build a TensorRT engine: {exc}. Engines are built on (and only run on) the "
            "GPU that serves them"
        ) from exc


# ----------------------------------------------------------------------------- the build


def default_timing_cache(engine_path: Path) -> Path:
    """Shared by every build on this machine when ``FOCUS_ENGINE_CACHE`` is set, else beside."""
    cache_dir = os.environ.get("FOCUS_ENGINE_CACHE")
    if cache_dir:
        return Path(cache_dir) / "timing.cache"
    return engine_path.with_name("timing.cache")


class _Logger:
    """Adapter so TensorRT's messages go through ``logging``."""

    def __new__(cls, trt: Any) -> Any:
        levels = {
            trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
            trt.ILogger.Severity.ERROR: logging.ERROR,
            trt.ILogger.Severity.WARNING: logging.WARNING,
            trt.ILogger.Severity.INFO: logging.DEBUG,
            trt.ILogger.Severity.VERBOSE: logging.DEBUG,
        }

        class TrtLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                logger.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

        return TrtLogger()


def _fp16_graph_file(onnx_path: Path, directory: Path) -> Path:
    """The fp16 version of ``onnx_path`` for a strongly typed build (TensorRT 11)."""
    try:
        import onnx

        from export.graph import to_fp16
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "this TensorRT has no BuilderFlag.FP16, so an fp16 engine needs an fp16 graph; "
            f"converting one needs the onnx package ({exc}); or pass the graph written by "
            "`focus export onnx --fp16`"
        ) from exc
    out = directory / "model.fp16.onnx"
    onnx.save_model(to_fp16(onnx.load(str(onnx_path))), str(out))
    return out


def _parse(
    trt: Any, builder: Any, trt_logger: Any, onnx_path: Path, precision: str, scratch: Path
) -> tuple[Any, Any]:
    """The parsed network; a strongly typed fp16 one on TensorRT without BuilderFlag.FP16."""
    source, flags = onnx_path, 0
    if not hasattr(trt.BuilderFlag, "FP16") and precision != "fp32":
        if precision == "bf16":
            raise EngineBuildError(
                f"TensorRT {trt.__version__} has no BuilderFlag.BF16 (strongly typed "
                "networks only); build fp16 or fp32"
            )
        source = _fp16_graph_file(onnx_path, scratch)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(INPUT_NAMES):
        raise EngineBuildError(f"{onnx_path}: inputs {names}, expected {list(INPUT_NAMES)}")
    return network, parser  # the parser must outlive the build


def _builder_config(
    trt: Any, builder: Any, precision: str, workspace_gb: float, profile: Profile
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if hasattr(trt.BuilderFlag, "FP16") and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "FP16") and precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    trt_profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        trt_profile.set_shape(name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    return config


def _use_timing_cache(config: Any, cache_path: Path) -> None:
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: drop a stale cache
        logger.warning(
            "timing cache %s does not match this GPU/TensorRT; starting anew", cache_path
        )
        config.set_timing_cache(config.create_timing_cache(b""), False)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp32",
    max_batch: int = 8,
    opt_batch: int | None = None,
    workspace_gb: float = 4.0,
    shapes: dict[str, tuple[int, int]] | None = None,
    timing_cache: str | Path | None = None,
    device_index: int = 0,
) -> EngineSidecar:
    """Build ``engine_path`` (and its sidecar) from ``onnx_path``; see the module doc."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if workspace_gb <= 0:
        raise ValueError(f"workspace must be > 0 GB, got {workspace_gb}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    trt = import_tensorrt()
    gpu_name = cuda_device_name(device_index)
    card = load_card(onnx_path)
    if shapes is None:
        profile = default_profile(card, max_batch, opt_batch)
    else:
        profile = make_profile(shapes["min"], shapes["opt"], shapes["max"], max_batch, opt_batch)
    check_graph(onnx_path)

    start = time.perf_counter()
    trt_logger = _Logger(trt)
    builder = trt.Builder(trt_logger)
    with tempfile.TemporaryDirectory(prefix="focus-trt-") as scratch:
        network, _parser = _parse(trt, builder, trt_logger, onnx_path, precision, Path(scratch))
        config = _builder_config(trt, builder, precision, workspace_gb, profile)
        cache_path = Path(timing_cache) if timing_cache else default_timing_cache(engine_path)
        _use_timing_cache(config, cache_path)
        logger.info(
            "building %s engine from %s (profile %s) on %s, TensorRT %s",
            precision,
            onnx_path,
            profile.to_dict(),
            gpu_name,
            trt.__version__,
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see log)")
        write_atomic(engine_path, bytes(serialized))
        write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    info = EngineSidecar(
        gpu_name=gpu_name,
        tensorrt_version=str(trt.__version__),
        precision=precision,
        max_batch=max_batch,
        profile={
            name: {"min": profile.min, "opt": profile.opt, "max": profile.max}
            for name in INPUT_NAMES
        },
        onnx=onnx_path.name,
        build_seconds=time.perf_counter() - start,
    )
    info.save(engine_path)
    size_mb = engine_path.stat().st_size / 1e6
    logger.info("wrote %s (%.1f MB) in %.0f s", engine_path, size_mb, info.build_seconds)
    return info


def engine_predictor(engine_path: str | Path) -> Any:
    """The engine through ``models.runtime.tensorrt`` (the runner the service uses)."""
    from models.runtime.tensorrt import TensorRTPredictor

    return TensorRTPredictor([Path(engine_path)])


def check_engine_parity(
    onnx_path: str | Path, engine_path: str | Path, precision: str, card: ModelCard | None = None
) -> Any:
    """Masks of the engine vs ONNX Runtime (CPU) on the parity images; raises ParityError."""
    from export.parity import check_parity, parity_images, tolerance_for
    from models.runtime.onnxruntime import OnnxRuntimePredictor

    card = card if card is not None else load_card(onnx_path)
    tol = tolerance_for(precision)
    # fp32 engines may use TF32 kernels: judged with the reduced-precision tolerances too.
    tol = tolerance_for("fp16") if precision == "fp32" else tol
    profile = _read_profile(Path(engine_path))
    groups = [g for g in parity_images() if profile is None or _group_fits(g, card, profile)]
    if not groups:
        raise ValueError(f"none of the parity images fit the engine profile {profile}")
    return check_parity(
        OnnxRuntimePredictor(onnx_path),
        engine_predictor(engine_path),
        card,
        tol,
        groups,
        what=f"TensorRT {precision} engine {engine_path} vs ONNX Runtime",
    )


def _read_profile(engine_path: Path) -> Profile | None:
    try:
        shapes = EngineSidecar.load(engine_path).profile[INPUT_NAMES[0]]
        return Profile(*(tuple(shapes[k]) for k in ("min", "opt", "max")))  # type: ignore[arg-type]
    except (ValueError, KeyError):
        return None


def _group_fits(group: Sequence[Any], card: ModelCard, profile: Profile) -> bool:
    from models.processing import padded_size, resized_size

    h, w = group[0].shape[:2]
    hp, wp = padded_size(
        *resized_size(h, w, card.input_short_side, card.input_max_size), card.size_divisibility
    )
    return profile.contains((len(group), 3, hp, wp))
