"""``train(TrainConfig(...))``: images and masks in, a FOCUS checkpoint directory out.

From Python (e.g. the train -> export pipeline)::

    from training.config import TrainConfig, tiny_cpu_config
    from training.loop import train

    ckpt = train(tiny_cpu_config("runs/cod", "camouflage", ["data/cod"], iters=600,
                                 max_seconds=600))   # -> Path("runs/cod/checkpoint")
    ckpt = train(TrainConfig(out=Path("runs/cod"), task="camouflage", data=("data/cod",)))

``train`` returns the checkpoint directory (``models.checkpoint.load_checkpoint`` reads it).

The reference recipe (OFFICIAL_TRAINING.md, FOCUS ``train_net.py``) is the default: AdamW with
lr 1e-4, backbone x0.1, weight decay 0.05 (see ``training.optim`` for which parameters),
poly schedule (power 0.9, no warmup), full-model gradient clipping to 0.01, 20k iterations of
8 images, the losses of ``training.losses`` with 12544 points, and the augmentation of
``training.augment`` scaled to the preset's input size.

Reference quirks reproduced by default, each with the option that changes it:

* stochastic depth 0.4 in the ViT blocks and extractor FFNs (a hidden default of the reference's
  ViT) -- ``drop_path``;
* weight decay on ``pos_embed``, ``cls_token``, ``level_embed`` and the ``gamma``s --
  ``decay_embeddings=False``;
* the fixed square canvas: the (scaled) 640 crop is padded/truncated to the (scaled) 512
  canvas, so what lies right/below the canvas is lost -- ``crop`` (``crop = canvas`` crops
  uniformly inside the canvas instead);
* layer 0 of the decoder cross-attends unmasked in training (the reference's PCA mask is a
  no-op). This lives in ``models.transformer_decoder`` and has no training switch;
* no DINOv2 registers, the near-constant CLIP input and the inert CLIP mask prompt (models/).

Run folder ``out``:

    checkpoint/         focus.json + model.safetensors (models.checkpoint, atomic)
    trainer_state.pt    everything to resume: weights, optimiser, GradScaler, step, data
                        position (plain tensors/dicts; torch.save, read with weights_only=True)
    log.jsonl           one line per logged step
    tb/                 TensorBoard events, when tensorboard is installed

Both files are rewritten every ``save_every`` steps and at the end, each atomically (a
temporary file or folder, then ``os.replace``); ``trainer_state.pt`` carries the weights
itself, so a crash between the two writes never pairs an optimiser with other weights.

Determinism: every random draw of a step (drop-path, point sampling) comes from seeds derived
from (seed, rank, step) and every sample from (seed, epoch, index) (``training.data``), so
``resume=True`` continues to the same weights as an uninterrupted run (bitwise on CPU).

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), each process
trains on its shard with DDP -- NCCL on CUDA, gloo on CPU. ``batch_size`` is per process and
per micro-step: the optimiser sees ``batch_size x accum x world_size`` images (the reference:
4 x 1 x 2 GPUs = 8). The backbone's ``norm1..4`` become SyncBatchNorm under DDP on CUDA, as in
the reference (the edge ResNet's BN and the CLIP projection heads stay per-process); gloo has
no SyncBatchNorm, so on CPU every BN uses per-process statistics. Rank 0 writes all files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from models.build import build_focus
from models.checkpoint import save_checkpoint
from models.config import FocusConfig, ModelCard, get_preset, make_card
from models.tasks import get_task
from training.augment import AugmentConfig
from training.config import TrainConfig
from training.data import ResumableSampler, TrainDataset, collate
from training.datasets import Pair, pair_folders, resolve_dataset
from training.distributed import DistInfo, convert_sync_bn, init_distributed, resolve_device
from training.losses import FocusCriterion, LossWeights, summarise
from training.matcher import HungarianMatcher
from training.monitor import Monitor, preview_image
from training.optim import build_optimizer, poly_lr, resolve_amp, set_lr

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
CHECKPOINT_DIR = "checkpoint"
STATE_FORMAT = 1


# ----------------------------------------------------------------------------- setup


def training_pairs(config: TrainConfig) -> list[Pair]:
    """The run's image/mask pairs; problems (missing or unreadable files) are logged by name
    and left out."""
    specs = list(config.data)
    if not specs and config.images is None:
        if config.data_root is None:
            raise ValueError("give data (names or folders), images + masks, or data_root")
        specs = list(get_task(config.task).train_sets)
    lists = [resolve_dataset(s, config.data_root) for s in specs]
    if config.images is not None and config.masks is not None:
        lists.append(pair_folders(config.images, config.masks))
    pairs: list[Pair] = []
    for pl in lists:
        if pl.problems:
            logger.warning("%s", pl.report())
        pairs += pl.pairs
    if not pairs:
        raise ValueError("no usable training pairs")
    return pairs


def _model_config(config: TrainConfig) -> FocusConfig:
    cfg = get_preset(config.preset)
    if config.init_from is not None:  # fine-tuning: the checkpoint's network, input size too
        card = ModelCard.load(config.init_from)
        if card.preset != config.preset:
            raise ValueError(
                f"{config.init_from} holds a {card.preset!r} model, not {config.preset!r}; "
                f"pass --preset {card.preset}"
            )
        cfg = card.config
    if config.drop_path is not None:
        cfg = dataclasses.replace(cfg, drop_path_rate=config.drop_path)
    if config.input_short_side is not None:
        ratio = cfg.input_max_size / cfg.input_short_side
        cfg = dataclasses.replace(
            cfg,
            input_short_side=config.input_short_side,
            input_max_size=int(round(config.input_short_side * ratio)),
        )
    return cfg


def _setup_clip(model: nn.Module, config: TrainConfig, device: torch.device) -> Tensor | None:
    """Freeze CLIP as the reference does; return the [3, E] text features (fg, bg, "None")
    when distillation is on, else None."""
    from models.clip import freeze_clip_except_mask_embedding, load_openai_clip

    predictor = model.sem_seg_head.predictor
    refiner = predictor.clip_refiner
    if config.clip_weights is None:
        if refiner is not None:  # unused without distillation: nothing to train
            for module in (refiner, predictor.text_embed, predictor.image_embed):
                module.requires_grad_(False)
        logger.info(
            "CLIP distillation is off (give --clip-weights and --clip-vocab to enable it); "
            "training without the loss_clip terms"
        )
        return None
    if refiner is None:
        raise ValueError(f"preset {config.preset!r} has no CLIP refiner (with_clip=False)")
    from models.clip_tokenizer import ClipTokenizer

    load_openai_clip(refiner, config.clip_weights)
    freeze_clip_except_mask_embedding(refiner)
    # Our decoder never reads non_object_embedding (the reference concatenates and drops it,
    # so only weight decay moves it there); frozen here so DDP sees no unused parameter.
    refiner.non_object_embedding.requires_grad_(False)
    tokenizer = ClipTokenizer(config.clip_vocab)
    prompts = (*get_task(config.task).prompts, "None")
    ctx = refiner.clip_model.context_length
    with torch.no_grad():
        tokens = [tokenizer.tokenize_templates(p, context_length=ctx) for p in prompts]
        text = refiner.text_features(tokens)  # [3, E]
    logger.info("CLIP distillation on (weight %g), prompts %s", _clip_weight(config), prompts[:2])
    return text.to(device)


def _clip_weight(config: TrainConfig) -> float:
    if config.clip_weight is not None:
        return config.clip_weight
    return get_task(config.task).clip_weight


def _to_device(batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor, list[dict]]:
    nb = device.type == "cuda"
    image = batch["image"].to(device, non_blocking=nb)
    edges = batch["edges"].to(device, non_blocking=nb)
    targets = [{k: v.to(device, non_blocking=nb) for k, v in t.items()} for t in batch["targets"]]
    return image, edges, targets


def _step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed drawn from (seed, rank, step) (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the run


def _card(config: TrainConfig, model_cfg: FocusConfig, step: int, distilled: bool) -> ModelCard:
    card = make_card(
        config.task,
        config.preset,
        model_cfg,
        provenance={
            "source": "focus train",
            "step": step,
            "iters": config.iters,
            "clip_distillation": distilled,
            "torch": torch.__version__,
            "train_config": config.to_dict(),
        },
    )
    # save_checkpoint stamps an unversioned card with the date and a hash of the weights
    return card if config.version is None else dataclasses.replace(card, version=config.version)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the trainer state ({exc})") from exc


# Settings that change the network, its trainable parameters or the random stream.
_RESUME_KEYS = ("task", "preset", "seed", "input_short_side", "decay_embeddings")


def _check_resumable(state: dict[str, Any], config: TrainConfig, world: int) -> None:
    saved, now = state["config"], config.to_dict()
    for key in _RESUME_KEYS:
        if saved.get(key) != now[key]:
            raise ValueError(f"cannot resume: {key} was {saved.get(key)!r}, now {now[key]!r}")
    if (saved.get("clip_weights") is None) != (config.clip_weights is None):
        raise ValueError(
            "cannot resume: the CLIP distillation was "
            f"{'off' if saved.get('clip_weights') is None else 'on'} in this run"
        )
    if state["world_size"] != world:
        logger.warning(
            "resuming with %d processes instead of %d: the data order differs from an "
            "uninterrupted run", world, state["world_size"],
        )


def train(config: TrainConfig, pairs: list[Pair] | None = None) -> Path:
    """Train (or resume) the run in ``config.out``; returns its checkpoint directory
    (``out/checkpoint``, loadable with ``models.checkpoint.load_checkpoint``).

    ``pairs``, when given, are the training pairs instead of those ``config`` names (the
    pipeline trains on what is left after holding out its evaluation split)."""
    with torch_threads(config.threads):
        return _train(config, pairs)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch on ``threads`` CPU threads inside the block (``None``: leave them), then restore.

    On a shared or oversubscribed CPU, OpenMP barriers make small ops wait for threads that are
    not scheduled: one thread per process can be several times faster (the tiny model ~30x).
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Run:
    """What every step of one run uses, built once by :func:`_build_run`."""

    config: TrainConfig
    model_cfg: FocusConfig
    dist: DistInfo
    device: torch.device
    model: nn.Module
    ddp: nn.Module  # ``model``, or its DistributedDataParallel wrapper
    forward: Callable[..., Any]  # ``ddp``, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    criterion: FocusCriterion
    weights: LossWeights
    clip_text: Tensor | None
    params: list[Tensor]


@dataclass
class _Window:
    """What happened since the last logged step (averaged into the next log record)."""

    t_log: float
    images: int = 0
    steps: int = 0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class _Step:
    """One optimiser step's outcome, and its last micro-batch for the preview image."""

    grad_norm: float
    loss: float  # weighted total, averaged over the micro-steps
    image: Tensor
    targets: list[dict[str, Tensor]]
    outputs: dict[str, Any]


def _train(config: TrainConfig, pairs: list[Pair] | None) -> Path:
    d = init_distributed(config.device)
    device = resolve_device(config.device, d)
    run_dir = Path(config.out)
    state_path = run_dir / STATE_FILE
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if state_path.exists() and not config.resume:
        raise FileExistsError(f"{run_dir} already holds a run; resume it or choose another out")

    torch.manual_seed(config.seed)  # same initial weights on every rank
    model_cfg = _model_config(config)
    model = build_focus(model_cfg)
    state = _load_state(state_path) if config.resume and state_path.exists() else None
    if config.resume and state is None:
        logger.info("nothing to resume in %s; starting a new run", run_dir)
    run = _build_run(config, model_cfg, model, d, device, state)
    start, consumed = (0, 0) if state is None else (
        int(state["step"]), int(state["samples_per_rank"])
    )
    if state is not None:
        logger.info("resuming %s at step %d", run_dir, start)

    pairs = training_pairs(config) if pairs is None else pairs
    loader = _data_loader(config, model_cfg, pairs, d, device, consumed)
    if d.main:
        logger.info(
            "training %s/%s on %d pairs: %d steps x %d images (batch %d x accum %d x %d "
            "processes), %s, amp %s, %d trainable parameters",
            config.preset, config.task, len(pairs), config.iters,
            config.batch_size * config.accum * d.world, config.batch_size, config.accum,
            d.world, device, run.amp_dtype, sum(p.numel() for p in run.params),
        )
    monitor = Monitor(
        run_dir, total=config.iters, start=start, enabled=d.main,
        progress=config.progress, tensorboard=config.tensorboard,
    )
    step: int | None = None
    try:
        step = _run_steps(run, iter(loader), monitor, run_dir, start, consumed)
    finally:
        monitor.close(step)
        if d.owned:
            dist.destroy_process_group()
    if d.main:
        logger.info("wrote %s (step %d)", run_dir / CHECKPOINT_DIR, step)
    return run_dir / CHECKPOINT_DIR


def _build_run(
    config: TrainConfig,
    model_cfg: FocusConfig,
    model: nn.Module,
    d: DistInfo,
    device: torch.device,
    state: dict[str, Any] | None,
) -> _Run:
    """Weights, CLIP, devices, optimiser, mixed precision, DDP and the criterion of a run;
    restores the weights, optimiser and scaler from ``state`` on resume."""
    if state is None and config.init_from is not None:
        from models.checkpoint import load_weights

        load_weights(model, config.init_from)
        logger.info("fine-tuning from %s", config.init_from)
    if state is None and config.backbone_weights is not None:
        from models.dinov2_weights import load_dinov2_into

        load_dinov2_into(model, config.backbone_weights)
    clip_text = _setup_clip(model, config, device)
    if d.enabled and device.type == "cuda":
        convert_sync_bn(model)
    model.to(device).train()

    optimizer = build_optimizer(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        backbone_multiplier=config.backbone_multiplier,
        decay_embeddings=config.decay_embeddings,
    )
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if state is not None:
        _check_resumable(state, config, d.world)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])

    ddp = model
    if d.enabled:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    weights = LossWeights(clip=_clip_weight(config))
    criterion = FocusCriterion(
        matcher=HungarianMatcher(num_points=config.num_points),
        weights=weights,
        num_classes=model_cfg.num_classes,
        num_points=config.num_points,
        oversample_ratio=config.oversample_ratio,
        importance_sample_ratio=config.importance_sample_ratio,
    )
    return _Run(
        config=config, model_cfg=model_cfg, dist=d, device=device, model=model, ddp=ddp,
        forward=torch.compile(ddp) if config.compile else ddp,
        optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, criterion=criterion,
        weights=weights, clip_text=clip_text,
        params=[p for g in optimizer.param_groups for p in g["params"]],
    )


def _data_loader(
    config: TrainConfig,
    model_cfg: FocusConfig,
    pairs: list[Pair],
    d: DistInfo,
    device: torch.device,
    consumed: int,
) -> DataLoader:
    """Augmented batches of this rank's shard, continuing after ``consumed`` samples."""
    aug = AugmentConfig.for_short_side(model_cfg.input_short_side)
    if config.crop is not None:
        aug = dataclasses.replace(aug, crop=config.crop)
    if config.short_sides is not None:
        aug = dataclasses.replace(aug, short_sides=tuple(config.short_sides))
    dataset = TrainDataset(pairs, aug, seed=config.seed)
    sampler = ResumableSampler(len(dataset), config.seed, d.rank, d.world, start=consumed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=config.workers > 0,
    )


def _run_steps(
    run: _Run,
    batches: Iterator[dict[str, Any]],
    monitor: Monitor,
    run_dir: Path,
    step: int,
    consumed: int,
) -> int:
    """Optimiser steps from ``step`` to the end (iters, stop_at or the time budget), logging,
    previews and checkpoints on the way and at the end; returns the last step."""
    config, d = run.config, run.dist
    t_start = time.perf_counter()
    window = _Window(t_log=t_start)
    end = config.iters if config.stop_at is None else min(config.iters, config.stop_at)
    images_per_step = config.batch_size * config.accum * d.world
    while step < end:
        done = _optimizer_step(run, batches, step, window.sums)
        consumed += config.batch_size * config.accum
        step += 1
        window.steps += 1
        window.images += images_per_step
        monitor.step(done.loss, images_per_step)
        if _out_of_time(config, d, t_start) and step < end:
            logger.info("time budget of %.0f s used up at step %d", config.max_seconds, step)
            end = step

        if step % config.log_every == 0 or step == end:
            now = time.perf_counter()
            monitor.log({
                "step": step,
                "lr": poly_lr(config.lr, step - 1, config.iters, config.poly_power),
                "images_per_s": window.images / max(now - window.t_log, 1e-9),
                "grad_norm": done.grad_norm,
                "seconds": now - t_start,
                "loss": {k: v / window.steps for k, v in window.sums.items()},
            })
            window = _Window(t_log=now)
        if monitor.wants_images and (step % config.image_every == 0 or step == 1):
            t0 = done.targets[0]
            picture = preview_image(done.image[0], t0["masks"], t0["labels"], done.outputs)
            monitor.image("preview", picture, step)

        if step < end and config.save_every > 0 and step % config.save_every == 0:
            _save(run, run_dir, step, consumed)
    _save(run, run_dir, step, consumed)
    return step


def _optimizer_step(
    run: _Run, batches: Iterator[dict[str, Any]], step: int, sums: dict[str, float]
) -> _Step:
    """Step ``step`` (0-based): ``accum`` micro-batches forward/backward, then the update.
    Adds the weighted loss terms (averaged over micro-steps) to ``sums``."""
    config, d = run.config, run.dist
    set_lr(run.optimizer, poly_lr(config.lr, step, config.iters, config.poly_power))
    seed = _step_seed(config.seed, d.rank, step)
    torch.manual_seed(seed)  # drop-path draws
    generator = torch.Generator(run.device).manual_seed(seed)  # point sampling
    total = 0.0
    outputs: dict[str, Any] | None = None
    targets: list[dict[str, Tensor]] | None = None
    image: Tensor | None = None
    for micro in range(config.accum):
        batch = next(batches)
        image, edges, targets = _to_device(batch, run.device)
        last = micro == config.accum - 1
        sync = run.ddp.no_sync() if d.enabled and not last else contextlib.nullcontext()
        autocast = torch.autocast(
            run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
        )
        with sync:
            with autocast:
                outputs = run.forward(image, edges, run.clip_text)
                losses = run.criterion(outputs, targets, generator)
                loss = run.criterion.total(losses) / config.accum
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {step}: "
                    + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                )
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        for term, value in summarise(losses, run.weights).items():
            sums[term] = sums.get(term, 0.0) + value / config.accum
            if term == "total":
                total += value / config.accum
    assert outputs is not None and targets is not None and image is not None  # accum >= 1
    return _Step(_apply_gradients(run), total, image, targets, outputs)


def _apply_gradients(run: _Run) -> float:
    """Clip (full-model L2 norm), step and zero the gradients; returns the norm before clipping."""
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    max_norm = run.config.clip_grad if run.config.clip_grad > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, max_norm))
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _out_of_time(config: TrainConfig, d: DistInfo, t_start: float) -> bool:
    """Whether the wall-clock budget is used up, agreed by every rank (they stop together)."""
    out_of_time = torch.tensor(
        float(config.max_seconds is not None
              and time.perf_counter() - t_start >= config.max_seconds)
    )
    if d.enabled:
        dist.all_reduce(out_of_time, op=dist.ReduceOp.MAX)
    return bool(out_of_time.item())


def _save(run: _Run, run_dir: Path, step: int, consumed: int) -> None:
    """Checkpoint and trainer state at ``step`` (rank 0 writes; every rank waits for it)."""
    d, config = run.dist, run.config
    if d.main:
        card = _card(config, run.model_cfg, step, run.clip_text is not None)
        save_checkpoint(run.model, card, run_dir / CHECKPOINT_DIR)
        _atomic_torch_save(
            {
                "format": STATE_FORMAT,
                "step": step,
                "samples_per_rank": consumed,
                "world_size": d.world,
                "config": config.to_dict(),
                "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else {},
            },
            run_dir / STATE_FILE,
        )
    if d.enabled:
        dist.barrier()
