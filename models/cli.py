"""``focus import-official``: a released FOCUS ``model_final.pth`` -> our checkpoint directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.config import PRESETS
from models.tasks import TASKS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-official",
        help="import a released FOCUS checkpoint (detectron2 .pth)",
        description="Strictly load a reference FOCUS checkpoint ({'model': state_dict}) into the "
        "given preset and write focus.json + model.safetensors. Missing or unexpected keys are "
        "listed and the import fails.",
    )
    p.add_argument("--weights", type=Path, required=True, help="model_final.pth")
    p.add_argument("--task", required=True, help=f"task or alias ({', '.join(TASKS)})")
    p.add_argument("--preset", required=True, choices=list(PRESETS))
    p.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    p.add_argument("--version", default=None,
                   help="focus.json version string (default: UTC date + hash of the weights)")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    import sys

    from models.checkpoint import CheckpointError
    from models.official import import_official
    from models.tasks import UnknownTaskError

    try:
        out = import_official(args.weights, args.task, args.preset, args.out, args.version)
    except (CheckpointError, UnknownTaskError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
