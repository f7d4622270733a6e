"""``focus pipeline``: train, evaluate, export and publish one task into a model repository.

    focus pipeline --task T --data D --out REPO [--recipe R] [--iters N] [--eval-data E]

Stages, each printed as one line with its outcome as it ends (training also shows its
progress bar, ``training.monitor``):

1. **train** -- ``training.loop.train`` on ``D`` (a folder with ``images/`` and ``masks/``, or a
   reference dataset name) into a run folder (``--work``, default a temporary folder), with the
   settings of ``--recipe`` (``training.config.RECIPES``) under the explicit ones. Without
   ``--eval-data`` a held-out split (``--holdout``, default 10 %, drawn with ``--seed``) is
   set aside first and never trained on;
2. **evaluate** -- the checkpoint on ``--eval-data``, else on the held-out split (with
   ``--holdout 0``: on the training data, which only shows that training took), through the
   shared inference path (``training.evaluate``);
3. **onnx** -- ``export.onnx.export_checkpoint``: fp32 graph + parity against PyTorch;
4. **tensorrt** -- ``export.tensorrt.build_engine`` (fp16) + parity against ONNX Runtime, only
   where TensorRT and a CUDA device are present (otherwise: skipped, with the reason);
5. **publish** -- a new version ``REPO/<task>/<N>/{focus.json, model.onnx}`` (+
   ``model.engine``/``.json``, and ``model.safetensors`` with ``--with-weights``) and
   ``pipeline.json`` (what each stage measured), through ``models.repository.publish_version``
   once everything passed; older versions stay where they are.

A stage that fails stops the pipeline with a non-zero exit and leaves ``REPO`` untouched.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.contract import ENGINE_FILE, ONNX_FILE, PIPELINE_REPORT_FILE, WEIGHTS_FILE
from models.repository import publish_version
from training.config import RECIPES, TINY_CPU, recipe_fields  # torch-free: the train recipes

__all__ = ["RECIPES", "TINY_CPU", "PipelineConfig", "PipelineError", "holdout_split",
           "run_pipeline", "train_config"]

logger = logging.getLogger(__name__)

SHOWN_METRICS = ("MAE", "S", "E_mean", "wF", "F_max", "F1", "images")


@dataclass(frozen=True)
class PipelineConfig:
    task: str
    data: tuple[str, ...]
    out: Path  # the model repository
    preset: str = "tiny"
    iters: int = 2000
    recipe: str = "reference"  # training.config.RECIPES; explicit fields below win
    batch_size: int | None = None  # None: the recipe's
    num_points: int | None = None
    eval_data: tuple[str, ...] = ()  # default: a held-out split of data
    holdout: float = 0.1  # fraction of data held out when eval_data is empty; 0: none
    eval_limit: int | None = None
    data_root: Path | None = None
    work: Path | None = None  # run folder; None: a temporary one, removed at the end
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    progress: bool = True  # console progress of training and evaluation
    tensorrt: str = "auto"  # auto (when CUDA + TensorRT are present) | off | on
    trt_precision: str = "fp16"
    with_weights: bool = False
    train_options: dict[str, Any] = field(default_factory=dict)  # extra TrainConfig fields


@dataclass
class StageResult:
    name: str
    status: str  # ok | skipped | failed
    seconds: float
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


class PipelineError(RuntimeError):
    def __init__(self, stage: StageResult) -> None:
        self.stage = stage
        super().__init__(f"pipeline stage {stage.name!r} failed: {stage.detail}")


def _print(result: StageResult, echo: Callable[[str], None]) -> None:
    echo(f"[{result.status:>7}] {result.name:<9} {result.seconds:7.1f} s  {result.detail}")


def _stage(
    name: str,
    fn: Callable[[], tuple[str, dict[str, Any]]],
    results: list[StageResult],
    echo: Callable[[str], None],
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        detail, data = fn()
        status = "ok"
    except _Skip as skip:
        detail, data, status = str(skip), {}, "skipped"
    except Exception as exc:
        result = StageResult(
            name, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
        )
        results.append(result)
        _print(result, echo)
        raise PipelineError(result) from exc
    result = StageResult(name, status, time.perf_counter() - start, detail, data)
    results.append(result)
    _print(result, echo)
    return data


# Stage results the next stages need but pipeline.json does not record (paths of this machine).
_INTERNAL = ("checkpoint", "eval_pairs", "threads")


def _portable(spec: str) -> str:
    """A data argument as pipeline.json records it: a dataset name, or a folder's own name
    (absolute paths of the machine that built a model say nothing to its users)."""
    path = Path(spec)
    return path.name if path.is_absolute() or path.exists() else spec


class _Skip(Exception):
    """A stage that does not apply here (e.g. TensorRT without a GPU)."""


def _pair_lists(specs: tuple[str, ...], data_root: Path | None) -> list[Any]:
    from training.datasets import resolve_dataset

    return [resolve_dataset(s, data_root) for s in specs]


def run_pipeline(
    config: PipelineConfig, echo: Callable[[str], None] = logger.info
) -> dict[str, Any]:
    """Run every stage; returns the report also written to ``REPO/<task>/pipeline.json``."""
    from models.tasks import canonical_task
    task = canonical_task(config.task)
    if not config.data:
        raise ValueError("--data is required (a folder with images/ and masks/, or a dataset)")
    if config.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {config.recipe!r}; choose one of {', '.join(RECIPES)}")
    if not 0 <= config.holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {config.holdout}")
    results: list[StageResult] = []
    scratch = None
    work = config.work
    if work is None:
        scratch = tempfile.mkdtemp(prefix=f"focus-pipeline-{task}-")
        work = Path(scratch)
    work.mkdir(parents=True, exist_ok=True)
    staging = work / "publish"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    state: dict[str, Any] = {}
    try:
        state.update(_stage("train", lambda: _train(config, task, work), results, echo))
        state.update(_stage("evaluate", lambda: _evaluate(config, state), results, echo))
        state.update(_stage("onnx", lambda: _onnx(state, staging), results, echo))
        state.update(_stage("tensorrt", lambda: _tensorrt(config, staging), results, echo))
        report = {
            "task": task,
            "preset": config.preset,
            "recipe": config.recipe,
            "data": [_portable(d) for d in config.data],
            "eval_data": _eval_data_record(config, state),
            "stages": [
                {
                    "name": r.name,
                    "status": r.status,
                    "seconds": round(r.seconds, 1),
                    "detail": r.detail,
                    **{k: v for k, v in r.data.items() if k not in _INTERNAL},
                }
                for r in results
            ],
        }
        _stage("publish", lambda: _publish(config, task, state, staging, report), results, echo)
        return report
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


HELD_OUT = "held-out"  # the name of the held-out split in pipeline.json and the stage lines


def holdout_split(pairs: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held out): ``round(fraction * n)`` pairs (at least one) drawn with ``seed``; the
    rest keep their order. Raises ValueError when nothing would be left to train on."""
    import numpy as np

    n_eval = max(1, round(fraction * len(pairs)))
    if len(pairs) - n_eval < 1:
        raise ValueError(
            f"{len(pairs)} image/mask pairs are too few to hold out {n_eval} for evaluation; "
            "give --eval-data or more data"
        )
    chosen = set(np.random.default_rng(seed).permutation(len(pairs))[:n_eval].tolist())
    train = [p for i, p in enumerate(pairs) if i not in chosen]
    return train, [p for i, p in enumerate(pairs) if i in chosen]


def _training_pairs(config: PipelineConfig) -> tuple[list[Any] | None, Any, dict[str, Any]]:
    """(pairs to train on or None for all of data, the held-out PairList or None, its record)."""
    if config.eval_data or config.holdout == 0:
        return None, None, {}
    from training.datasets import PairList

    pairs: list[Any] = []
    for pl in _pair_lists(config.data, config.data_root):
        if pl.problems:
            logger.warning("%s", pl.report())
        pairs += pl.pairs
    train, held = holdout_split(pairs, config.holdout, config.seed)
    record = {"fraction": config.holdout, "seed": config.seed, "images": len(held),
              "of": len(pairs)}
    return train, PairList(HELD_OUT, held), record


def _eval_data_record(config: PipelineConfig, state: dict[str, Any]) -> list[str]:
    if config.eval_data:
        return [_portable(d) for d in config.eval_data]
    held = state.get("held_out")
    if held:
        return [f"{HELD_OUT}: {held['images']} of the {held['of']} pairs of data (seed "
                f"{held['seed']}), never trained on"]
    return [_portable(d) for d in config.data]  # --holdout 0: the training data


def train_config(config: PipelineConfig, task: str, run: Path) -> Any:
    """The ``training.config.TrainConfig`` of the train stage: the recipe, then the pipeline's
    explicit settings, then ``train_options``."""
    from training.config import TrainConfig

    options = {
        **recipe_fields(
            config.recipe,
            batch_size=config.batch_size,
            num_points=config.num_points,
            workers=config.workers,
        ),
        "out": run,
        "task": task,
        "preset": config.preset,
        "data": config.data,
        "data_root": config.data_root,
        "iters": config.iters,
        "seed": config.seed,
        "device": config.device,
        "resume": (run / "trainer_state.pt").exists(),
        "progress": config.progress,
        **config.train_options,
    }
    return TrainConfig(**options)


def _train(config: PipelineConfig, task: str, work: Path) -> tuple[str, dict[str, Any]]:
    from training.loop import train

    run = work / "run"
    pairs, held_out, record = _training_pairs(config)
    train_cfg = train_config(config, task, run)
    checkpoint = train(train_cfg, pairs)
    data: dict[str, Any] = {
        "checkpoint": str(checkpoint), "threads": train_cfg.threads, **_last_log(run)
    }
    steps = data.get("steps", config.iters)
    text = f"{config.iters} iterations" if steps == config.iters else (
        f"{steps} of {config.iters} iterations (time budget)"
    )
    if held_out is None:
        return text, data
    text += f" on {len(pairs or ())} pairs ({len(held_out)} held out for evaluation)"
    return text, {**data, "eval_pairs": held_out, "held_out": record}


def _last_log(run: Path) -> dict[str, Any]:
    """The last log.jsonl record of the run: where training ended and its loss."""
    try:
        last = json.loads((run / "log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return {}
    return {"steps": last["step"], "final_loss": round(last["loss"]["total"], 4)}


def _evaluate(config: PipelineConfig, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Scored with the training recipe's torch threads (see ``training.loop.torch_threads``)."""
    from training.loop import torch_threads

    with torch_threads(state.get("threads")):
        return _score(config, state)


def _score(config: PipelineConfig, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from tqdm import tqdm

    from models.checkpoint import load_checkpoint
    from training.evaluate import evaluate_pairs, torch_predictor

    model, card = load_checkpoint(state["checkpoint"])
    predict = torch_predictor(model)
    scores = {}
    if state.get("eval_pairs") is not None:
        pair_lists = [state["eval_pairs"]]
    else:
        pair_lists = _pair_lists(config.eval_data or config.data, config.data_root)
    for pairs in pair_lists:
        total = len(pairs) if config.eval_limit is None else min(config.eval_limit, len(pairs))
        with tqdm(total=total, desc=f"evaluate {pairs.name}", unit="img",
                  disable=None if config.progress else True) as bar:
            result = evaluate_pairs(
                pairs, predict, card, limit=config.eval_limit, progress=bar.update
            )
        binary = result["binary"]
        scores[pairs.name] = {k: binary[k] for k in SHOWN_METRICS if k in binary}
    text = "; ".join(
        f"{name} (binary): " + ", ".join(_fmt(k, v) for k, v in s.items())
        for name, s in scores.items()
    )
    return text, {"metrics": scores}


def _fmt(key: str, value: Any) -> str:
    return f"{key} {value}" if isinstance(value, int) else f"{key} {value:.3f}"


def _onnx(state: dict[str, Any], staging: Path) -> tuple[str, dict[str, Any]]:
    from export.onnx import export_checkpoint
    from training.loop import torch_threads

    logger.info("exporting ONNX and checking its parity against PyTorch (minutes on a CPU)")
    with torch_threads(state.get("threads")):  # the recipe's threads, as for training
        result = export_checkpoint(state["checkpoint"], staging / ONNX_FILE)
    p = result["parity"]["fp32"]
    text = (
        f"{result['bytes'] / 1e6:.1f} MB; parity vs PyTorch: soft max |diff| "
        f"{p['soft_max_abs']:.2g}, IoU {p['min_iou']:.4f}"
    )
    files = {k: Path(result[k]).name for k in ("onnx", "external_data") if result.get(k)}
    return text, {"onnx": {**result, **files}}  # file names: no paths of this machine


def _tensorrt(config: PipelineConfig, staging: Path) -> tuple[str, dict[str, Any]]:
    from export.tensorrt import (
        TensorRTUnavailableError,
        build_engine,
        check_engine_parity,
        cuda_device_name,
        import_tensorrt,
    )

    if config.tensorrt == "off":
        raise _Skip("disabled (--tensorrt off)")
    try:
        import_tensorrt()
        cuda_device_name()
    except (TensorRTUnavailableError, ImportError) as exc:
        if config.tensorrt == "on":
            raise
        raise _Skip(str(exc).split(";")[0]) from None
    engine = staging / ENGINE_FILE
    info = build_engine(staging / ONNX_FILE, engine, precision=config.trt_precision)
    report = check_engine_parity(staging / ONNX_FILE, engine, config.trt_precision)
    text = (
        f"{config.trt_precision} engine for {info.gpu_name} (TensorRT {info.tensorrt_version}); "
        f"parity vs ONNX Runtime: mean |diff| {report.soft_mean_abs:.2g}, IoU {report.min_iou:.4f}"
    )
    return text, {"tensorrt": {**info.to_dict(), "parity": report.to_dict()}}


def _publish(
    config: PipelineConfig, task: str, state: dict[str, Any], staging: Path, report: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    if config.with_weights:
        shutil.copyfile(Path(state["checkpoint"]) / WEIGHTS_FILE, staging / WEIGHTS_FILE)
    (staging / "timing.cache").unlink(missing_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    (staging / PIPELINE_REPORT_FILE).write_text(text, encoding="utf-8")
    entry = publish_version(config.out, staging, task=task)
    target = entry.directory
    files = sorted(p.name for p in target.iterdir())
    return f"{target}: {', '.join(files)}", {"entry": str(target), "version": entry.version}
