"""Subcommands of ``focus`` that live with training: ``train``, ``eval`` and ``data synth``.

``register(subparsers)`` adds them to the top-level parser; each sets ``func`` to a handler
``(args) -> exit code``. Torch is imported inside the handlers only, so ``focus --help`` and
``focus data synth`` stay light.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models.contract import CARD_FILE
from models.tasks import TASKS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_data(subparsers)
    _register_eval(subparsers)


# ----------------------------------------------------------------------------- data synth


def _register_data(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="dataset tools")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{synth}")
    p = sub.add_parser(
        "synth",
        help="write a synthetic image/mask dataset for a task",
        description="Write OUT/images/*.png, OUT/masks/*.png and OUT/synth.json. Deterministic: "
        "sample i depends only on (task, seed, i, size).",
    )
    p.add_argument("--task", required=True, help=f"task or alias ({', '.join(TASKS)})")
    p.add_argument("--n", type=int, required=True, help="number of image/mask pairs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="short side in pixels (default 256)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.synth import write_dataset
    from models.tasks import UnknownTaskError, canonical_task

    try:
        task = canonical_task(args.task)
    except UnknownTaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.n < 1 or args.size < 32 or args.workers < 1:
        print("error: --n and --workers must be >= 1 and --size >= 32", file=sys.stderr)
        return 2
    with tqdm(total=args.n, desc=f"synth {task}", unit="img", disable=None) as bar:
        out = write_dataset(
            task, args.n, args.out, seed=args.seed, size=args.size, workers=args.workers,
            progress=bar.update,
        )
    print(f"wrote {args.n} {task} pairs to {out}")
    return 0


# ----------------------------------------------------------------------------- eval


def add_data_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--data", nargs="+", default=None, metavar="NAME_OR_DIR",
        help=f"{what}: reference dataset names (under --data-root) or folders holding "
        "images/ and masks/",
    )
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the reference datasets ($DETECTRON2_DATASETS layout)")
    p.add_argument("--images", type=Path, default=None, help="image folder (with --masks)")
    p.add_argument("--masks", type=Path, default=None, help="mask folder (with --images)")


def resolve_data_arguments(args: argparse.Namespace, default_names: tuple[str, ...]) -> list:
    """PairLists for --data / --images+--masks, or the default names under --data-root."""
    from training.datasets import pair_folders, resolve_dataset

    if (args.images is None) != (args.masks is None):
        raise ValueError("--images and --masks go together")
    specs = list(args.data or [])
    if not specs and args.images is None:
        if args.data_root is None:
            raise ValueError("give --data NAME_OR_DIR, --images/--masks, or --data-root")
        specs = list(default_names)
    lists = [resolve_dataset(s, args.data_root) for s in specs]
    if args.images is not None:
        lists.append(pair_folders(args.images, args.masks))
    return lists


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint (MAE, S, E, wF, F, BER, F1, AUC)",
        description="Score a checkpoint on binary (as the reference evaluator) and soft masks "
        "at the original resolution. Without --data, the task's reference test sets under "
        "--data-root are used.",
    )
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="checkpoint directory (or a `focus train` run folder)")
    add_data_arguments(p, "datasets to score")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is often fastest on a busy "
                   "shared CPU)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.tasks import get_task
    from training.datasets import DatasetError
    from training.evaluate import evaluate_pairs, torch_predictor, write_json
    from training.metrics import format_table

    try:
        from models.checkpoint import load_checkpoint
    except ImportError as exc:
        print(f"error: cannot load checkpoints ({exc})", file=sys.stderr)
        return 1
    checkpoint = args.checkpoint
    if not (checkpoint / CARD_FILE).is_file() and (checkpoint / "checkpoint").is_dir():
        checkpoint = checkpoint / "checkpoint"  # a `focus train` run folder
    try:
        model, card = load_checkpoint(checkpoint)
    except (OSError, ValueError) as exc:
        print(f"error: {checkpoint}: {exc}", file=sys.stderr)
        return 1
    try:
        datasets = resolve_data_arguments(args, get_task(card.task).test_sets)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    predict = torch_predictor(model, args.device)
    results, rows = [], []
    for pairs in datasets:
        if pairs.problems:
            print(pairs.report(), file=sys.stderr)
        total = len(pairs) if args.limit is None else min(args.limit, len(pairs))
        with tqdm(total=total, desc=pairs.name, unit="img", disable=None) as bar:
            res = evaluate_pairs(pairs, predict, card, limit=args.limit, progress=bar.update)
        results.append(res)
        rows += [(res["dataset"], "binary", res["binary"]), (res["dataset"], "soft", res["soft"])]
    print(format_table(rows))
    if args.json is not None:
        payload = {"checkpoint": str(checkpoint), "task": card.task, "preset": card.preset,
                   "datasets": results}
        print(f"wrote {write_json(payload, args.json)}")
    return 0


# ----------------------------------------------------------------------------- train


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from models.config import PRESETS
    from training.config import RECIPES, TINY_CPU

    def d(key: str, reference: object) -> str:
        """Help text for a recipe flag: its reference default and its tiny-cpu value."""
        return f"(reference: {reference}; tiny-cpu: {TINY_CPU.get(key, reference)})"

    p = subparsers.add_parser(
        "train",
        help="train a FOCUS checkpoint on images and masks",
        description="Train (or --resume) a run in --out: OUT/checkpoint (focus.json + "
        "model.safetensors), OUT/trainer_state.pt, OUT/log.jsonl, OUT/tb. Defaults are the "
        "reference recipe (AdamW 1e-4, backbone x0.1, wd 0.05, poly 0.9, clip 0.01, 20k steps "
        "of 8 images); --recipe tiny-cpu starts from settings that let a randomly initialised "
        "tiny model learn in minutes on a CPU (explicit flags still win). Multi-process: "
        "torchrun --nproc-per-node N -m focus_cli train ... (NCCL on GPUs, gloo on CPU).",
    )
    p.add_argument("--recipe", default="reference", choices=list(RECIPES),
                   help="defaults of the flags marked below (reference)")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="model size (tiny)")
    p.add_argument("--task", required=True, help=f"task or alias ({', '.join(TASKS)})")
    add_data_arguments(p, "training data")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--iters", type=int, default=20000, help="optimiser steps (20000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per process and micro-step " + d("batch_size", 8))
    p.add_argument("--lr", type=float, default=None, help="base learning rate " + d("lr", 1e-4))
    p.add_argument("--backbone-multiplier", type=float, default=None,
                   help="lr factor of the backbone " + d("backbone_multiplier", 0.1))
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (0.05)")
    p.add_argument("--clip-grad", type=float, default=None,
                   help="full-model gradient L2 norm limit, 0 disables " + d("clip_grad", 0.01))
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-steps (1)")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision: auto = bf16 on CUDA where supported, else fp16; "
                   "off on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint directory's weights (e.g. "
                   "model_repository/salient); its preset and input size are kept")
    p.add_argument("--version", default=None,
                   help="focus.json version string (default: UTC date + hash of the weights)")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="DINOv2 weights (.pth / .safetensors) for the ViT")
    p.add_argument("--clip-weights", type=Path, default=None,
                   help="OpenAI CLIP state dict (enables the CLIP distillation with --clip-vocab)")
    p.add_argument("--clip-vocab", type=Path, default=None,
                   help="CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz)")
    p.add_argument("--clip-weight", type=float, default=None,
                   help="CLIP loss weight (default: the task's, 1.0; forgery 0.01)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes " + d("workers", 2))
    p.add_argument("--seed", type=int, default=0, help="run seed (0)")
    p.add_argument("--save-every", type=int, default=None,
                   help="write the checkpoint every N steps, 0 = only at the end "
                   + d("save_every", 5000))
    p.add_argument("--log-every", type=int, default=None,
                   help="log every N steps " + d("log_every", 20))
    p.add_argument("--num-points", type=int, default=None,
                   help="points of the matcher and mask losses " + d("num_points", 12544))
    p.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth rate " + d("drop_path", "the preset's, 0.4"))
    p.add_argument("--no-decay-embeddings", action="store_true",
                   help="exempt pos_embed, cls_token, level_embed and gammas from weight decay "
                   "(the reference decays them)")
    p.add_argument("--crop", type=int, default=None,
                   help="crop size before the canvas (default: the recipe's 640 scaled to the "
                   "preset; the canvas size avoids the reference's canvas truncation)")
    p.add_argument("--input-short-side", type=int, default=None,
                   help="train (and record in focus.json) this input short side, a multiple "
                   "of 32 " + d("input_short_side", "the preset's, tiny 256"))
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop early with a checkpoint after this wall-clock time")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process; 1 is often fastest on a busy shared "
                   "CPU " + d("threads", "torch's default"))
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from models.tasks import UnknownTaskError
    from training.config import RECIPE_FIELDS, TrainConfig, recipe_fields
    from training.datasets import DatasetError
    from training.loop import train

    # Flags whose default comes from --recipe have argparse default None.
    values = recipe_fields(args.recipe, **{k: getattr(args, k) for k in RECIPE_FIELDS})
    try:
        if args.init_from is not None and args.preset is None:  # the checkpoint's, by default
            from models.config import ModelCard

            values["preset"] = ModelCard.load(args.init_from).preset
        config = TrainConfig(
            out=args.out, task=args.task,
            data=tuple(args.data or ()), data_root=args.data_root,
            images=args.images, masks=args.masks, iters=args.iters,
            weight_decay=args.weight_decay, accum=args.accum, amp=args.amp,
            compile=args.compile, clip_weight=args.clip_weight,
            backbone_weights=args.backbone_weights, clip_weights=args.clip_weights,
            init_from=args.init_from, version=args.version,
            clip_vocab=args.clip_vocab, decay_embeddings=not args.no_decay_embeddings,
            crop=args.crop, resume=args.resume, seed=args.seed, device=args.device,
            max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
            **values,
        )
        checkpoint = train(config)
    except (UnknownTaskError, DatasetError, ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {checkpoint}")
    return 0
