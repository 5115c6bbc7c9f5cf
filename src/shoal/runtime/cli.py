"""Subcommands of this component (filled in by its issue)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this component's subcommands to `shoal`."""
