"""`shoal --help` conventions, checked over every subcommand the parser has (so a new option is
checked as soon as it exists): each option with a value and a default says that default in its
help; developer-only flags stay out of it; -v is taken anywhere; `shoal --version` prints the
package's version."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli import build_parser

ROOT = Path(__file__).parents[1]


def every_parser(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("shoal",)
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from every_parser(child, (*path, name))


PARSERS = dict(every_parser(build_parser()))


def shown_default(action: argparse.Action) -> str:
    default = action.default
    return str(getattr(default, "value", default))  # enum members show their value


def options_with_defaults(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Options that take a value and have one by default. Flags (store_true, store_false,
    version, help) are left out: their default is the flag's absence, which the help says."""
    for action in parser._actions:
        if (
            action.option_strings
            and action.nargs != 0
            and action.help is not argparse.SUPPRESS
            and action.default not in (None, False, [], argparse.SUPPRESS)
        ):
            yield action


def test_the_walk_reaches_every_command_group():
    assert {"shoal export", "shoal serve", "shoal operator run", "shoal router run"} <= set(PARSERS)
    assert {"shoal build", "shoal repo check", "shoal embed"} <= set(PARSERS)
    # and the check below has something to check in each of these
    for name in ("shoal export", "shoal serve", "shoal operator run", "shoal router run"):
        assert list(options_with_defaults(PARSERS[name])), name


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_with_a_default_says_it_in_help(name):
    parser = PARSERS[name]
    formatter = parser._get_formatter()
    missing = []
    for action in options_with_defaults(parser):
        text = " ".join(formatter._format_action(action).split())  # as --help prints it
        if "default" not in text or shown_default(action) not in text:
            missing.append(f"{'/'.join(action.option_strings)} (default {action.default!r})")
    assert not missing, f"`{name} --help` hides the default of: {', '.join(missing)}"


def test_the_defaults_shown_are_the_ones_the_code_uses():
    from shoal.exporter.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_OPSET
    from shoal.operator import defaults as operator_defaults

    export = PARSERS["shoal export"].format_help()
    assert f"(default: {DEFAULT_OPSET})" in export
    assert f"(default: {DEFAULT_MAX_BATCH_SIZE})" in " ".join(export.split())
    operator = " ".join(PARSERS["shoal operator run"].format_help().split())
    assert f"default {operator_defaults.METRICS_PORT}" in operator
    assert f"default {operator_defaults.DRIFT_INTERVAL_S:g}" in operator


def test_developer_only_flags_stay_out_of_help():
    crds = PARSERS["shoal operator crds"]
    assert "--write" not in crds.format_help()
    assert crds.parse_args(["--write"]).write  # still there for scripts/sync-chart-crds.sh


def test_verbose_is_taken_before_or_after_the_subcommand():
    parse = build_parser().parse_args
    assert parse(["-v", "serve", "models"]).verbose
    assert parse(["serve", "models", "-v"]).verbose
    assert parse(["operator", "run", "-A", "--verbose"]).verbose
    assert parse(["serve", "models"]).verbose is False


def test_shoal_version_prints_the_package_version():
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"shoal {importlib.metadata.version('shoal')}"
