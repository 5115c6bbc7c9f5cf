"""`shoal` command line: one subcommand group per component, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shoal.errors import UserError

# Each module exposes `register(subparsers)`; its subcommands set `func(args) -> int`.
# Imports happen inside the subcommands so that `shoal --help` stays fast and the operator image
# does not need torch.
COMMAND_MODULES = (
    "shoal.exporter.cli",
    "shoal.model_repository.cli",
    "shoal.runtime.cli",
    "shoal.operator.cli",
    "shoal.catalog.cli",
    "shoal.router.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # shoal's own progress at INFO; other libraries (onnxruntime's optimizer is chatty) at WARNING.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("shoal").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"shoal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
