"""``focus``: one command line, subcommands registered by the package that drives each.

    train, eval, data synth      -> training.cli
    export, pipeline             -> export.cli
    import-official              -> models.cli
    serve, segment               -> service.cli

Registration imports only argument definitions; torch is imported inside the handlers that need
it, so ``focus serve`` with ONNX Runtime or TensorRT never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

_SUBCOMMAND_MODULES = ("training.cli", "export.cli", "models.cli", "service.cli")
# This project's own top-level modules: one of them missing is a bug, never an optional extra.
_OWN_PACKAGES = frozenset({"models", "training", "export", "service", "focus_cli"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focus", description="FOCUS foreground segmentation")
    # dest differs from subcommands' own --log-level (e.g. serve's, which configures uvicorn)
    parser.add_argument(
        "--log-level",
        dest="root_log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A package whose optional dependencies are missing (e.g. no torch in the service
            # image) simply contributes no subcommands; say so at debug level. A broken import
            # inside this project is re-raised: silently losing a subcommand hides the bug.
            if exc.name is None or exc.name.split(".")[0] in _OWN_PACKAGES:
                raise
            logging.getLogger(__name__).debug("skipping %s: %s", name, exc)
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.root_log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
