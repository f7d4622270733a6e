"""``TrainConfig``: every setting of a training run, and the tiny-on-CPU recipe.

Defaults are the reference recipe (OFFICIAL_TRAINING.md §1-§6); ``training.loop`` documents
what each setting does and which reference quirks the defaults keep.

:data:`RECIPES` names the recipes ``focus train --recipe`` and ``focus pipeline --recipe`` start
from (explicit flags win): ``reference`` (the defaults) and ``tiny-cpu`` (:data:`TINY_CPU`).

:func:`tiny_cpu_config` is the recipe the synthetic benchmark and the demo-model pipeline use:
the reference's values are tuned for a DINOv2-initialised large model trained 20k steps on GPUs,
and a randomly initialised ``tiny`` on a CPU learns far too slowly with them (lr 1e-4 with the
backbone at 0.1x, gradients clipped to 0.01). Each change is a named ``TrainConfig`` field, see
:data:`TINY_CPU`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from models.config import get_preset
from models.tasks import canonical_task


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the reference recipe (OFFICIAL_TRAINING.md §1, §6).

    Data: ``data`` (dataset names under ``data_root`` or folders with images/ and masks/)
    and/or ``images`` + ``masks``; with neither, the task's reference training sets under
    ``data_root``.
    """

    out: Path
    task: str = "camouflage"
    preset: str = "tiny"
    data: tuple[str, ...] = ()
    data_root: Path | None = None
    images: Path | None = None
    masks: Path | None = None
    # solver
    iters: int = 20000
    batch_size: int = 8  # per process and micro-step
    lr: float = 1e-4
    backbone_multiplier: float = 0.1
    weight_decay: float = 0.05
    clip_grad: float = 0.01  # full-model L2 norm; 0 disables
    poly_power: float = 0.9
    accum: int = 1
    amp: str = "auto"  # auto | off | bf16 | fp16
    compile: bool = False
    # losses
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    clip_weight: float | None = None  # None: the task's (1.0; forgery 0.01)
    # weights
    backbone_weights: Path | None = None
    init_from: Path | None = None  # a checkpoint directory to fine-tune (its preset and input)
    clip_weights: Path | None = None
    clip_vocab: Path | None = None
    # reference quirks (see the module docstring); None / True keep the reference behaviour
    drop_path: float | None = None
    decay_embeddings: bool = True
    crop: int | None = None
    short_sides: tuple[int, ...] | None = None  # resize choices; None: the recipe's, scaled
    # input scale: None keeps the preset's (tiny 256); another multiple of 32 trains (and, via
    # the card, evaluates and serves) at that short side, with the recipe scaled to it
    input_short_side: int | None = None
    # run control
    resume: bool = False
    seed: int = 0
    workers: int = 2
    save_every: int = 5000
    log_every: int = 20
    image_every: int = 500
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    max_seconds: float | None = None  # stop early (with a checkpoint) after this wall time
    stop_at: int | None = None  # stop early (with a checkpoint) after this many total steps
    version: str | None = None  # focus.json "version"; None: date + hash of the weights
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        positive = {"iters": self.iters, "batch_size": self.batch_size, "accum": self.accum,
                    "num_points": self.num_points, "log_every": self.log_every}
        bad = [f"{k}={v}" for k, v in positive.items() if v < 1]
        if bad:
            raise ValueError(f"must be >= 1: {', '.join(bad)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_grad < 0 or self.workers < 0:
            raise ValueError("need lr > 0, weight_decay >= 0, clip_grad >= 0, workers >= 0")
        if (self.images is None) != (self.masks is None):
            raise ValueError("images and masks go together")
        if (self.clip_weights is None) != (self.clip_vocab is None):
            raise ValueError("CLIP distillation needs both clip_weights and clip_vocab")
        if self.input_short_side is not None and (
            self.input_short_side < 32 or self.input_short_side % 32
        ):
            raise ValueError(
                f"input_short_side must be a multiple of 32, got {self.input_short_side}"
            )
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        canonical_task(self.task)  # raises UnknownTaskError
        get_preset(self.preset)  # raises ValueError

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }


# Tiny on a CPU, from scratch (see the module docstring); measured in benchmarks/RESULTS.md.
TINY_CPU: Mapping[str, Any] = MappingProxyType({
    "preset": "tiny",
    "input_short_side": 128,  # tiny's 256 costs ~4x more per image on CPU
    "batch_size": 8,
    "lr": 1e-3,
    "backbone_multiplier": 1.0,  # 0.1 protects pretrained DINOv2 weights; tiny has none
    "clip_grad": 1.0,  # 0.01 in the reference
    "drop_path": 0.1,  # 0.4 in the reference
    "num_points": 1024,  # = the 32x32 mask logits of a 128 input (reference: 12544)
    "threads": 1,  # OpenMP barriers on a shared 2-core CPU made 2 threads slower than 1
    "workers": 1,
    "save_every": 0,
    "log_every": 10,
})


# The recipes of `focus train --recipe` and `focus pipeline --recipe`: TrainConfig fields that
# replace its defaults. "reference" is TrainConfig's own defaults (OFFICIAL_TRAINING.md).
RECIPES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "reference": MappingProxyType({}),
    "tiny-cpu": TINY_CPU,
})
# The fields some recipe sets: their CLI flags default to None, meaning "the recipe's value".
RECIPE_FIELDS: tuple[str, ...] = tuple(sorted({k for r in RECIPES.values() for k in r}))


def recipe_fields(recipe: str, **explicit: Any) -> dict[str, Any]:
    """``recipe``'s TrainConfig fields with every ``explicit`` value that is not None on top."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return {**RECIPES[recipe], **{k: v for k, v in explicit.items() if v is not None}}


def tiny_cpu_config(
    out: str | Path, task: str, data: tuple[str, ...] | list[str], iters: int, **overrides: Any
) -> TrainConfig:
    """:data:`TINY_CPU` for ``task`` on ``data`` (folders with images/ and masks/, or dataset
    names), ``iters`` steps; ``overrides`` replace any field (e.g. ``max_seconds``)."""
    values = {**TINY_CPU, "out": Path(out), "task": task, "data": tuple(str(d) for d in data),
              "iters": iters, **overrides}
    return TrainConfig(**values)
