"""`shoal repo list DIR` and `shoal repo check DIR [NAME ...]`: what a model repository holds, and
whether every entry is complete and consistent with its manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shoal.fleet.placement import format_size


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this component's subcommands to `shoal`."""
    repo = subparsers.add_parser("repo", help="inspect and check a model repository")
    commands = repo.add_subparsers(dest="repo_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="one line per shoal entry of the repository")
    listing.add_argument("repository", metavar="DIR")
    listing.set_defaults(func=_list)

    check = commands.add_parser(
        "check", help="check entries: files, configs, hashes, inputs/outputs vs manifest"
    )
    check.add_argument("repository", metavar="DIR")
    check.add_argument("names", nargs="*", metavar="NAME", help="entries to check (default: all)")
    check.set_defaults(func=_check)


def _parity(manifest) -> str:
    """A failed result if any; else the served dtype's result closest to its threshold."""
    if not manifest.parity:
        return "-"

    def margin(result) -> float:
        above = result.value - result.threshold
        return above if result.metric.startswith("min") else -above

    served = [r for r in manifest.parity if r.dtype == manifest.dtype] or manifest.parity
    failed = [r for r in manifest.parity if not r.passed]
    # A passing count that must be 0 (rerankers' discordant_pairs) says less than a figure with
    # a tolerance: shown only when it is all there is.
    shown = failed[0] if failed else min(served, key=lambda r: (r.threshold == 0, margin(r)))
    verdict = "FAILED" if failed else "ok"
    return f"{verdict} {shown.dtype} {shown.metric}={shown.value:.6g}"


def _rows(repository: Path) -> list[list[str]]:
    from shoal.model_repository.repository import list_entries

    rows = []
    for entry in list_entries(repository):
        m = entry.manifest
        if m is None:
            rows.append([entry.name, "?", "?", "?", "?", "?", f"unreadable: {entry.error}"])
            continue
        dims = "-" if m.dims is None else str(m.dims)
        task = f"{m.task}+{len(m.adapters)} LoRA" if m.adapters else m.task
        rows.append(
            [m.name, task, dims, m.dtype, m.runtime, format_size(m.memory_bytes), _parity(m)]
        )
    return rows


def _repository(args: argparse.Namespace) -> Path:
    from shoal.errors import UserError, local_folder_problem

    problem = local_folder_problem(args.repository, "repository", must_exist=True)
    if problem:
        raise UserError(problem)
    return Path(args.repository)


def _list(args: argparse.Namespace) -> int:
    from shoal.errors import UserError
    from shoal.model_repository.repository import RepositoryError

    try:
        rows = _rows(_repository(args))
    except RepositoryError as exc:
        raise UserError(str(exc)) from exc
    if not rows:
        print(f"{args.repository}: no shoal entries (folders with a shoal.json)")
        return 0
    header = ["NAME", "TASK", "DIMS", "DTYPE", "RUNTIME", "MEMORY", "PARITY"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    from shoal.errors import UserError
    from shoal.model_repository.repository import RepositoryError, check_repository

    try:
        reports = check_repository(_repository(args), args.names or None)
    except RepositoryError as exc:
        raise UserError(str(exc)) from exc
    if not reports:
        raise UserError(f"{args.repository}: no shoal entries (folders with a shoal.json) to check")
    failed = 0
    for report in reports:
        if report.ok:
            print(f"{report.name}: ok")
            continue
        failed += 1
        for problem in report.problems:
            print(f"{report.name}: {problem}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(reports)} entries have problems", file=sys.stderr)
        return 1
    return 0
