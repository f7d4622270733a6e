"""``focus export {onnx,tensorrt,triton}``, ``focus pipeline`` and ``focus pull``.

``register(subparsers)`` only defines arguments; each handler imports what it needs, so
``focus export tensorrt`` runs in the torch-free GPU image. Exit status: 0 done, 1 failed
(parity, build, bad input), 2 usage error, 3 TensorRT / CUDA unavailable here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from models.contract import CARD_FILE

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# The exporter libraries' logging buries the result of an export (measured on a tiny demo
# model: 1,413 INFO lines from onnx_ir's initializer deduplication, 26 INFO and 12 WARNING
# lines from onnxscript's constant folding, torch's torchvision notes, and Python warnings about
# dynamic axis names); shown with -v only. torch's own warnings stay visible.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "onnx")  # ERROR and above without -v
TORCHVISION_NOTE = "torch.onnx._internal.exporter._registration"  # "torchvision is not installed"
EXPORTER_WARNINGS = r"torch\.(onnx|export|_export|utils\._pytree)|copyreg"  # Python warnings


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also show the exporter libraries' logs"
    )


def _exporter_logging(verbose: bool) -> None:
    """The exporter libraries' logs only with ``-v`` (see :data:`EXPORTER_LOGGERS`)."""
    for name in (*EXPORTER_LOGGERS, TORCHVISION_NOTE):
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", module=EXPORTER_WARNINGS)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, an ONNX graph to TensorRT, a repository to Triton",
    )
    sub = export.add_subparsers(
        dest="export_command", required=True, metavar="{onnx,tensorrt,openvino,triton}"
    )
    _register_onnx(sub)
    _register_tensorrt(sub)
    _register_openvino(sub)
    _register_triton(sub)
    _register_pipeline(subparsers)
    _register_pull(subparsers)


# ----------------------------------------------------------------------------- onnx


def _register_onnx(sub: Any) -> None:
    p = sub.add_parser(
        "onnx",
        help="checkpoint -> ONNX (+ focus.json beside it), checked against PyTorch",
        description="Export a checkpoint directory (focus.json + model.safetensors) to ONNX with "
        "dynamic batch, height and width, write focus.json beside it, and check the masks "
        "against PyTorch on random and synthetic images at batch 1 and 4 (fp32: soft-mask max "
        "|diff| <= 1e-4; fp16: mean |diff| <= 1e-2 and binary IoU >= 0.99). Fails (exit 1) "
        "with the measured numbers when parity fails.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    source.add_argument(
        "--onnx",
        type=Path,
        help="an exported fp32 model.onnx (with focus.json beside it): make only the "
        "--precision int8 variant beside it, without exporting again",
    )
    p.add_argument("--out", type=Path, help="output .onnx file (with --checkpoint)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument(
        "--fp16", action="store_true", help="fp16 weights and compute (float32 inputs/outputs)"
    )
    p.add_argument(
        "--external-data",
        action="store_true",
        help="weights in <out>.data beside the graph even under protobuf's 2 GB limit "
        "(automatic above it, e.g. giant)",
    )
    _register_variant_options(p)
    p.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8: also write model.int8.onnx beside model.onnx (ONNX Runtime quantization) "
        "and record its accuracy gate vs fp32 in focus.json (default fp32: no variant)",
    )
    p.add_argument(
        "--int8-mode",
        choices=("dynamic", "static"),
        default="dynamic",
        help="dynamic: int8 weights, activations quantized per call; static: QDQ with "
        "activation ranges calibrated on synthetic scenes (default dynamic, see RESULTS.md)",
    )
    p.add_argument(
        "--int8-exclude",
        default=None,
        metavar="REGEX",
        help="module paths (e.g. 'sem_seg_head') whose MatMul/Gemm stay fp32 (default: the "
        "measured default of export.precision)",
    )
    _add_verbose(p)
    p.set_defaults(func=_cmd_onnx)


def _register_variant_options(p: Any) -> None:
    """Options shared by every command that gates a precision variant."""
    trained = p.add_mutually_exclusive_group()
    trained.add_argument(
        "--trained",
        dest="trained",
        action="store_const",
        const=True,
        default=None,
        help="enforce the binary-IoU gate (default: when focus.json records training)",
    )
    trained.add_argument(
        "--untrained",
        dest="trained",
        action="store_const",
        const=False,
        help="random weights: gate on the soft mask only (binary IoU recorded, not enforced)",
    )
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: library default)")
    p.add_argument(
        "--calibration-images",
        type=_positive_int,
        default=8,
        help="synthetic scenes used to calibrate int8 activation ranges (8)",
    )


def _print_gate(variant: Any) -> bool:
    gate = variant.gate
    verdict = "passed" if gate.passed else "FAILED: " + "; ".join(gate.failures())
    print(f"gate {variant.name} ({variant.artefact}): {gate.summary()}: {verdict}")
    return bool(gate.passed)


def _cmd_int8(args: argparse.Namespace, onnx_path: Path) -> int:
    from export.precision import DEFAULT_INT8_EXCLUDE, build_int8

    try:
        variant = build_int8(
            onnx_path,
            mode=args.int8_mode,
            exclude=DEFAULT_INT8_EXCLUDE if args.int8_exclude is None else args.int8_exclude,
            calibration_images=args.calibration_images,
            trained=args.trained,
            threads=args.threads,
        )
    except ImportError as exc:
        print(f"error: int8 needs onnxruntime's quantization tools and onnx ({exc})",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNAVAILABLE
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"recorded the gate in {onnx_path.parent / CARD_FILE}")
    return 0 if _print_gate(variant) else EXIT_FAILED


def _cmd_onnx(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        if args.precision != "int8":
            print("error: --onnx needs --precision int8 (an fp32 export needs --checkpoint)",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        if not args.onnx.is_file() or not (args.onnx.parent / CARD_FILE).is_file():
            print(f"error: {args.onnx}: no such ONNX file with {CARD_FILE} beside it",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        return _cmd_int8(args, args.onnx)
    if args.out is None:
        print("error: --checkpoint needs --out", file=sys.stderr)
        return EXIT_USAGE
    if args.opset < 17:
        print(
            f"error: --opset must be >= 17 (TensorRT, LayerNormalization), got {args.opset}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not (args.checkpoint / CARD_FILE).is_file():
        print(
            f"error: {args.checkpoint} is not a checkpoint directory (no focus.json)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _exporter_logging(args.verbose)
    from export.onnx import export_checkpoint
    from export.parity import ParityError

    try:
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            opset=args.opset,
            fp16=args.fp16,
            external_data=True if args.external_data else None,
        )
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    data = f" + {Path(result['external_data']).name}" if result["external_data"] else ""
    print(
        f"wrote {result['onnx']}{data} ({result['bytes'] / 1e6:.1f} MB, {result['precision']}) "
        f"and {Path(result['onnx']).parent / 'focus.json'}"
    )
    seconds = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in result["seconds"].items())
    print(
        f"export took {result['total_s']:.0f} s ({seconds}); peak RSS "
        f"{result['peak_rss_bytes'] / 2**30:.1f} GiB"
    )
    print(f"parity images: {result['parity_images']}")
    for name, report in result["parity"].items():
        print(
            f"parity {name} vs PyTorch: soft max |diff| {report['soft_max_abs']:.3g}, "
            f"mean |diff| {report['soft_mean_abs']:.3g}, binary IoU min {report['min_iou']:.6f} "
            f"({report['runs']} masks): ok"
        )
    if args.precision == "int8":
        return _cmd_int8(args, Path(result["onnx"]))
    return 0


# ----------------------------------------------------------------------------- tensorrt


def _register_tensorrt(sub: Any) -> None:
    p = sub.add_parser(
        "tensorrt",
        help="ONNX -> TensorRT engine (+ model.engine.json), checked against ONNX Runtime",
        description="Build a TensorRT engine for this GPU with one optimisation profile over "
        "batch 1..B and every padded shape the preprocessing produces (or --shapes), a "
        "persistent timing cache, and check its masks against ONNX Runtime (mean |diff| <= "
        "1e-2, binary IoU >= 0.99). Needs TensorRT 10 and a CUDA device (exit 3 without).",
    )
    p.add_argument("--onnx", type=Path, required=True, help="exported ONNX graph")
    p.add_argument("--out", type=Path, required=True, help="engine file (e.g. model.engine)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_const", const="fp16", dest="precision", help="allow fp16 kernels"
    )
    precision.add_argument(
        "--bf16", action="store_const", const="bf16", dest="precision", help="allow bf16 kernels"
    )
    p.set_defaults(precision="fp32")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="profile max batch (8)")
    p.add_argument(
        "--opt-batch",
        type=_positive_int,
        default=None,
        help="batch the kernels are tuned for (default: --max-batch)",
    )
    p.add_argument(
        "--workspace",
        type=_positive_float,
        default=4.0,
        help="builder workspace memory pool limit in GB (4)",
    )
    p.add_argument(
        "--shapes",
        default=None,
        metavar="min=HxW,opt=HxW,max=HxW",
        help="padded input sizes of the profile (default: all the preprocessing "
        "can produce: 64 up to the card's max size, opt a 4:3 photo)",
    )
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="timing cache file (default $FOCUS_ENGINE_CACHE/timing.cache, else beside the engine)",
    )
    p.set_defaults(func=_cmd_tensorrt)


def _cmd_tensorrt(args: argparse.Namespace) -> int:
    from export.parity import ParityError
    from export.tensorrt import (
        EngineBuildError,
        GraphNotSupportedError,
        TensorRTUnavailableError,
        build_engine,
        check_engine_parity,
        parse_shapes,
    )

    try:
        shapes = parse_shapes(args.shapes) if args.shapes else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.onnx.is_file():
        print(f"error: {args.onnx}: no such ONNX file", file=sys.stderr)
        return EXIT_USAGE
    try:
        info = build_engine(
            args.onnx,
            args.out,
            precision=args.precision,
            max_batch=args.max_batch,
            opt_batch=args.opt_batch,
            workspace_gb=args.workspace,
            shapes=shapes,
            timing_cache=args.timing_cache,
        )
        print(
            f"wrote {args.out} ({info.precision}, max batch {info.max_batch}) for "
            f"{info.gpu_name}, TensorRT {info.tensorrt_version}, in {info.build_seconds:.0f} s"
        )
        report = check_engine_parity(args.onnx, args.out, args.precision)
    except TensorRTUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ParityError, EngineBuildError, GraphNotSupportedError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"parity vs ONNX Runtime: {report.summary()}: ok")
    return 0


# ----------------------------------------------------------------------------- openvino


def _register_openvino(sub: Any) -> None:
    p = sub.add_parser(
        "openvino",
        help="ONNX -> OpenVINO IR (model.xml) beside it, gated per precision in focus.json",
        description="Write model.xml + model.bin (fp32 weights) beside model.onnx and, for each "
        "--precision, run it on OpenVINO with that inference-precision hint against ONNX Runtime "
        "fp32 on 8 images through the shared post-processing; the gate (soft-mask mean |diff| "
        "<= 0.01, and binary IoU >= 0.99 on trained models) goes into focus.json. int8 (NNCF "
        "post-training quantization of --int8-scope, bf16 elsewhere) is kept only when it is "
        "faster than bf16 here. Exit 1 when a gate fails (the variant is recorded as failed).",
    )
    p.add_argument("--onnx", type=Path, required=True, help="exported fp32 model.onnx")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=("fp32", "bf16", "int8"),
        default=["fp32", "bf16"],
        help="precisions to gate (default fp32 bf16)",
    )
    p.add_argument(
        "--no-ir",
        action="store_true",
        help="write no IR: OpenVINO reads model.onnx (smaller repository; compiles from ONNX)",
    )
    p.add_argument(
        "--int8-scope",
        default=None,
        metavar="REGEX",
        help="module paths NNCF quantizes (default: the ViT blocks, r'^backbone\\.blocks\\.')",
    )
    p.add_argument(
        "--keep-slower-int8", action="store_true", help="keep int8 even when not faster than bf16"
    )
    _register_variant_options(p)
    p.set_defaults(func=_cmd_openvino)


def _cmd_openvino(args: argparse.Namespace) -> int:
    if not args.onnx.is_file() or not (args.onnx.parent / CARD_FILE).is_file():
        print(f"error: {args.onnx}: no such ONNX file with {CARD_FILE} beside it", file=sys.stderr)
        return EXIT_USAGE
    from export.precision import VIT_SCOPE, build_openvino
    from models.contract import BackendUnavailableError

    order = [p for p in ("fp32", "bf16", "int8") if p in args.precision]
    try:
        variants = build_openvino(
            args.onnx,
            order,
            write_ir=not args.no_ir,
            int8_scope=args.int8_scope or VIT_SCOPE,
            calibration_images=args.calibration_images,
            keep_slower_int8=args.keep_slower_int8,
            trained=args.trained,
            threads=args.threads,
        )
    except ImportError as exc:
        print(f"error: needs openvino (and nncf for int8): {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BackendUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    results = [_print_gate(v) for v in variants]
    print(f"recorded {len(variants)} gate(s) in {args.onnx.parent / CARD_FILE}")
    return 0 if all(results) else EXIT_FAILED


# ----------------------------------------------------------------------------- triton


def _register_triton(sub: Any) -> None:
    from_platforms = ("onnxruntime_onnx", "tensorrt_plan")
    p = sub.add_parser(
        "triton",
        help="our model repository -> a Triton Inference Server model repository",
        description="For the served version V of every task of the model repository write the "
        "network model <out>/<task>/{config.pbtxt, focus.json, V/model.onnx (or V/model.plan)} "
        "and an ensemble <task>_ensemble that takes encoded image bytes (image_bytes) and "
        "returns the PNG mask (mask_png): <task>_preprocess -> <task> -> <task>_postprocess, "
        "the first and last on Triton's Python backend running focus's own pre/post-processing.",
    )
    p.add_argument("--model-repository", type=Path, required=True, help="our model repository")
    p.add_argument("--out", type=Path, required=True, help="Triton model repository to write")
    p.add_argument("--platform", choices=from_platforms, default="onnxruntime_onnx")
    p.add_argument(
        "--model-backend",
        choices=("native", "python-onnxruntime"),
        default="native",
        help="native: Triton's onnxruntime_onnx / tensorrt_plan backends (NVIDIA's containers); "
        "python-onnxruntime: the network on ONNX Runtime inside Triton's Python backend, for "
        "Triton builds without the ONNX Runtime backend (CPU)",
    )
    p.add_argument(
        "--max-batch",
        type=_positive_int,
        default=None,
        help="max_batch_size (default 8; a plan's own max batch)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="dynamic batching queue delay in microseconds (2000)",
    )
    p.add_argument("--instances", type=_positive_int, default=1, help="instances per device (1)")
    p.add_argument(
        "--kind",
        choices=("KIND_AUTO", "KIND_GPU", "KIND_CPU"),
        default=None,
        help="instance kind (default KIND_GPU for plans, KIND_CPU for python-onnxruntime, "
        "else KIND_AUTO)",
    )
    p.add_argument(
        "--python-path",
        action="append",
        default=None,
        metavar="DIR",
        help="directory the Python models import focus's `models` package and numpy, Pillow, "
        "OpenCV (and ONNX Runtime) from, as seen by the Triton server; repeatable, relative to "
        "the Triton model repository when relative (default: this installation's root)",
    )
    p.add_argument(
        "--python-instances",
        type=_positive_int,
        default=1,
        help="instances of each preprocess / postprocess model (1)",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="largest image (width x height) the preprocess decodes (default 40000000)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads of the python-onnxruntime model (0: library default)",
    )
    p.set_defaults(func=_cmd_triton)


def _cmd_triton(args: argparse.Namespace) -> int:
    from export.triton import TritonOptions, write_triton_repository
    from models.contract import DEFAULT_MAX_PIXELS
    from models.repository import RepositoryError

    if args.kind is not None:
        kind = args.kind
    elif args.platform == "tensorrt_plan":
        kind = "KIND_GPU"
    else:
        kind = "KIND_CPU" if args.model_backend == "python-onnxruntime" else "KIND_AUTO"
    try:
        options = TritonOptions(
            platform=args.platform,
            model_backend=args.model_backend,
            max_batch=args.max_batch,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            kind=kind,
            python_path=tuple(args.python_path) if args.python_path else None,
            python_instances=args.python_instances,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            intra_op_threads=args.intra_op_threads,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        written = write_triton_repository(args.model_repository, args.out, options)
    except (OSError, ValueError, RepositoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for path in written:
        print(f"wrote {path}/config.pbtxt")
    print(f"Python models import from: {':'.join(options.resolved_python_path)}")
    return 0


# ----------------------------------------------------------------------------- pipeline


def _recipe_help(field: str, reference: object) -> str:
    """A recipe flag's default in each recipe, for its help text."""
    from export.pipeline import TINY_CPU

    return f"(reference: {reference}; tiny-cpu: {TINY_CPU.get(field, reference)})"


def _register_pipeline(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="train, evaluate, export (ONNX, TensorRT on CUDA) and publish one task",
        description="Train on --data, evaluate, export ONNX (parity-checked), build a TensorRT "
        "engine where TensorRT and CUDA are present, and write REPO/<task>/{focus.json, "
        "model.onnx, pipeline.json}. Training and evaluation show their progress and each "
        "stage ends with a one-line outcome; without --eval-data a held-out split of --data "
        "is evaluated. A failed stage exits 1 and leaves the repository untouched.",
    )
    p.add_argument("--task", required=True, help="task name or alias")
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="NAME_OR_DIR",
        help="training data: folders with images/ and masks/, or dataset names",
    )
    p.add_argument("--out", type=Path, required=True, help="model repository to write into")
    _add_pipeline_training_arguments(p)
    p.add_argument(
        "--eval-data",
        nargs="+",
        default=(),
        metavar="NAME_OR_DIR",
        help="evaluation data (default: a held-out split of --data, see --holdout)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="without --eval-data: the fraction of --data held out for evaluation and never "
        "trained on, drawn with --seed (0.1); 0 evaluates on the training data",
    )
    p.add_argument(
        "--eval-limit",
        type=_positive_int,
        default=None,
        help="evaluate at most this many images per set",
    )
    p.add_argument("--data-root", type=Path, default=None, help="root of reference datasets")
    p.add_argument(
        "--work", type=Path, default=None, help="run folder to keep (default: a temporary folder)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tensorrt",
        choices=("auto", "on", "off"),
        default="auto",
        help="build an engine: auto = when TensorRT and CUDA are present",
    )
    p.add_argument(
        "--with-weights",
        action="store_true",
        help="also publish model.safetensors (for the torch backend)",
    )
    p.add_argument(
        "--version",
        default=None,
        help="focus.json version string (default: UTC date + hash of the trained weights)",
    )
    _add_verbose(p)
    p.set_defaults(func=_cmd_pipeline)


def _add_pipeline_training_arguments(p: argparse.ArgumentParser) -> None:
    """The train stage's flags: --recipe and the settings that override it."""
    from export.pipeline import RECIPES

    p.add_argument(
        "--recipe",
        default="reference",
        choices=list(RECIPES),
        help="training settings to start from, as `focus train --recipe` (reference); "
        "tiny-cpu trains the tiny preset in minutes on a CPU; explicit flags win",
    )
    p.add_argument("--preset", default="tiny", help="model preset (tiny)")
    p.add_argument("--iters", type=_positive_int, default=2000, help="training iterations (2000)")
    p.add_argument(
        "--max-minutes",
        type=_positive_float,
        default=None,
        help="stop training early (with its checkpoint) after this wall-clock time",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=None,
        help="images per step " + _recipe_help("batch_size", 8),
    )
    p.add_argument(
        "--num-points", type=_positive_int, default=None,
        help="points per mask in the losses " + _recipe_help("num_points", 12544),
    )
    p.add_argument(
        "--lr", type=_positive_float, default=None,
        help="base learning rate " + _recipe_help("lr", 1e-4),
    )
    p.add_argument(
        "--input-short-side", type=_positive_int, default=None,
        help="train (and serve) at this input short side, a multiple of 32 "
        + _recipe_help("input_short_side", "the preset's"),
    )
    p.add_argument(
        "--threads", type=_positive_int, default=None,
        help="torch CPU threads for training " + _recipe_help("threads", "torch's default"),
    )
    p.add_argument("--device", default="auto", help="training device (auto)")
    p.add_argument(
        "--workers", type=int, default=None,
        help="data loader workers " + _recipe_help("workers", 2),
    )


def _cmd_pipeline(args: argparse.Namespace) -> int:
    _exporter_logging(args.verbose)
    from export.pipeline import PipelineConfig, PipelineError, run_pipeline
    from models.tasks import UnknownTaskError

    if not 0 <= args.holdout < 1:
        print(f"error: --holdout must be in [0, 1), got {args.holdout}", file=sys.stderr)
        return EXIT_USAGE
    train_options: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("lr", "input_short_side", "threads")
        if getattr(args, k) is not None
    }
    if args.max_minutes is not None:
        train_options["max_seconds"] = args.max_minutes * 60
    if args.version is not None:
        train_options["version"] = args.version
    try:
        config = PipelineConfig(
            task=args.task,
            data=tuple(args.data),
            out=args.out,
            preset=args.preset,
            iters=args.iters,
            recipe=args.recipe,
            batch_size=args.batch_size,
            num_points=args.num_points,
            eval_data=tuple(args.eval_data),
            holdout=args.holdout,
            eval_limit=args.eval_limit,
            data_root=args.data_root,
            work=args.work,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            tensorrt=args.tensorrt,
            with_weights=args.with_weights,
            train_options=train_options,
        )
        report = run_pipeline(config, echo=print)
    except UnknownTaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"published {args.out / report['task']}")
    return 0


# ----------------------------------------------------------------------------- pull


def _register_pull(subparsers: Any) -> None:
    from models.config import PRESETS
    from models.zoo import DEFAULT_REVISION, DEFAULT_SIZE, SIZES

    p = subparsers.add_parser(
        "pull",
        help="download a released FOCUS checkpoint from the Hugging Face Hub and publish it",
        description="Resolve TASK to the reference project's Hugging Face repository, download "
        "the checkpoint (huggingface_hub: its cache, resume and progress bar; HF_ENDPOINT, "
        "HF_HUB_OFFLINE, HF_TOKEN), check its sha256, import it strictly, export ONNX (parity-"
        "checked) and publish it as the next version of TASK in the model repository. A step "
        "that fails exits 1, names itself and publishes nothing; a version that already holds "
        "the same file at the same commit is not pulled again.",
    )
    p.add_argument("task", nargs="?", help="task name or alias (e.g. camouflage, cod)")
    p.add_argument(
        "--size",
        default=DEFAULT_SIZE,
        choices=list(PRESETS),
        help=f"backbone: {' or '.join(SIZES)} (default {DEFAULT_SIZE}); with --from any preset",
    )
    p.add_argument(
        "--revision", default=DEFAULT_REVISION, help="branch, tag or commit (default main)"
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository to publish into (default $FOCUS_MODEL_REPOSITORY, else "
        "./model_repository)",
    )
    p.add_argument(
        "--from",
        dest="hub_file",
        metavar="OWNER/NAME/FILE",
        help="another Hub file in the reference layout (a fine-tune), loaded into --size",
    )
    p.add_argument("--list", action="store_true", help="list the released checkpoints and exit")
    p.add_argument("--force", action="store_true", help="publish even if already pulled")
    p.add_argument(
        "--force-download", action="store_true", help="download again, ignoring the cache"
    )
    p.add_argument(
        "--download-only", action="store_true", help="download and verify only; publish nothing"
    )
    p.add_argument(
        "--with-weights",
        action="store_true",
        help="also publish model.safetensors (for the torch backend)",
    )
    _add_verbose(p)
    p.set_defaults(func=_cmd_pull)


def _print_releases() -> None:
    from models.zoo import DOWNLOAD_BYTES, SERVED_BYTES, SIZES, all_releases

    rows = [("task", "size", "Hugging Face file", "download", "served fp32")]
    rows += [
        (
            r.task,
            r.size,
            f"{r.repo_id}/{r.filename}",
            f"{DOWNLOAD_BYTES[r.size] / 1e9:.2f} GB",
            f"{SERVED_BYTES[r.size] / 1e9:.2f} GB",
        )
        for r in all_releases()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"sizes: {', '.join(SIZES)}; download = the .pth on the Hub (network + training state)")


def _cmd_pull(args: argparse.Namespace) -> int:
    import importlib
    import os
    import signal

    from models.tasks import UnknownTaskError
    from models.zoo import SourceError, hub_file, release

    if args.list:
        _print_releases()
        return 0
    if not args.task:
        print("error: focus pull needs a TASK (or --list)", file=sys.stderr)
        return EXIT_USAGE
    _exporter_logging(args.verbose)
    try:
        if args.hub_file:
            source = hub_file(args.task, args.size, args.hub_file, args.revision)
        else:
            source = release(args.task, args.size, args.revision)
    except (SourceError, UnknownTaskError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = []
    for module in ("torch", "huggingface_hub"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        print(
            f"error: focus pull needs {' and '.join(missing)}, which this installation lacks; "
            "install the train extra (pip install 'focus-serve[train]') or use the cpu-pull image",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    import logging

    from export.pull import PullError, PullOptions, pull

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per initializer
    # SIGTERM (a service stopping its pull, docker stop) unwinds like Ctrl-C, so the pull's
    # scratch folder and the Hub's partial download are removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    repository = args.repository or Path(
        os.environ.get("FOCUS_MODEL_REPOSITORY", "model_repository")
    )
    options = PullOptions(
        repository=repository,
        force=args.force,
        force_download=args.force_download,
        download_only=args.download_only,
        with_weights=args.with_weights,
    )
    try:
        result = pull(source, options, echo=lambda line: print(line, flush=True))
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if result.status == "published":
        print(f"published {source.task} version {result.version} at {result.directory}")
    elif result.status == "downloaded":
        print(
            f"downloaded {source.repo_id}/{source.filename}@{result.revision} (sha256 "
            f"{result.sha256}); published nothing (--download-only)"
        )
    return 0
