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

from models.tasks import TASKS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
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

    from models.tasks import UnknownTaskError, canonical_task
    from training.synth import write_dataset

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
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    add_data_arguments(p, "datasets to score")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
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
    try:
        model, card = load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as exc:
        print(f"error: {args.checkpoint}: {exc}", file=sys.stderr)
        return 1
    try:
        datasets = resolve_data_arguments(args, get_task(card.task).test_sets)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        payload = {"checkpoint": str(args.checkpoint), "task": card.task, "preset": card.preset,
                   "datasets": results}
        print(f"wrote {write_json(payload, args.json)}")
    return 0
