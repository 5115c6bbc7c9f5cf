"""`shoal` command line: one subcommand group per component, each registered by its own module."""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import sys
from typing import Any

from shoal.errors import UserError
from shoal.logging_setup import configure_logging

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


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's default in `--help`, read from the parser (so from the constant the code
    uses), unless its help already says it. Flags (no value), None and empty lists have nothing
    worth showing."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _has_default_to_show(action):  # argparse skips an empty help
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if _has_default_to_show(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _has_default_to_show(action: argparse.Action) -> bool:
    return (
        bool(action.option_strings)
        and action.nargs != 0
        and action.default not in (None, argparse.SUPPRESS, [])
    )


class ShoalParser(argparse.ArgumentParser):
    """The parser of `shoal` and of every subcommand (argparse makes subparsers of the same
    class): each help shows its defaults, and each takes -v (`shoal -v export` and `shoal export
    ... -v` alike)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            # Unset unless given here, so a subcommand does not undo `shoal -v` (the top level
            # sets False).
            default=argparse.SUPPRESS,
            help="debug logging, and the progress bars and warnings of the libraries shoal uses",
        )


def package_version() -> str:
    """The installed distribution's version; shoal.__version__ when run from a source tree."""
    try:
        return importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:
        import shoal  # noqa: PLC0415

        return shoal.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = ShoalParser(
        prog="shoal",
        description="Run fleets of small models (embedders, rerankers, ColBERT and sparse "
        "encoders) on NVIDIA Triton Inference Server. `shoal COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {package_version()}")
    parser.set_defaults(verbose=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"shoal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
