"""`shoal build CATALOG.yaml --repository DEST --manifests OUT/`: the CI export pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_MODEL_FAILED = 1  # some models failed; the others were written (UserError exits with 2)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="export every model of a catalog, publish the entries, write InferenceModel manifests",
        description="Validate CATALOG (every problem, with its line, before anything runs), export "
        "the models whose inputs changed (parallel processes), publish their entries to "
        "--repository (a folder, s3:// or gs://), and write one InferenceModel manifest per "
        "model into --manifests. Exit 0 when all models are built or unchanged, 1 when any "
        "failed (the others are still written), 2 for an invalid catalog or destination. "
        "See docs/catalog.md.",
    )
    parser.add_argument("catalog", type=Path, help="the catalog YAML file")
    parser.add_argument(
        "--repository", required=True, metavar="DEST",
        help="model repository: a folder, or s3://bucket/prefix, gs://bucket/prefix",
    )  # fmt: skip
    parser.add_argument(
        "--manifests", required=True, type=Path, metavar="OUT",
        help="folder for the InferenceModel YAML files (one per model)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", "-j", type=int, default=1, metavar="N",
        help="exports at once, as memory allows (default 1)",
    )  # fmt: skip
    parser.add_argument("--namespace", metavar="NS", help="metadata.namespace of the manifests")
    parser.add_argument(
        "--memory-budget", metavar="SIZE",
        help="memory parallel exports may use, e.g. 12Gi (default: available memory)",
    )  # fmt: skip
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="fsspec option for the object store, e.g. endpoint_url=http://minio:9000 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rebuild unchanged models too")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan; export nothing"
    )
    parser.add_argument(
        "--summary", type=Path, metavar="FILE",
        help="append a Markdown summary table to FILE (e.g. $GITHUB_STEP_SUMMARY)",
    )  # fmt: skip
    parser.add_argument(
        "--progress", choices=("auto", "plain", "live"), default="auto",
        help="live table on a terminal (auto: only outside CI), or plain lines",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _storage_options(pairs: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; values read as YAML scalars, so `use_ssl=false` is a boolean."""
    import yaml

    from shoal.errors import UserError

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--storage-option {pair!r} is not KEY=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        options[key] = parsed if isinstance(parsed, bool | int | float) else value
    return options


def run(args: argparse.Namespace) -> int:
    from shoal.catalog.build import BuildOptions, run_build
    from shoal.catalog.display import choose_progress, render_markdown_summary
    from shoal.catalog.publishing import DestinationError
    from shoal.catalog.schema import CatalogError
    from shoal.errors import UserError
    from shoal.model_repository.install import sigterm_as_interrupt
    from shoal.sizes import parse_size

    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if args.manifests.exists() and not args.manifests.is_dir():
        raise UserError(f"--manifests {args.manifests} is a file; give a folder")
    try:
        budget = parse_size(args.memory_budget) if args.memory_budget else None
    except ValueError as exc:
        raise UserError(f"--memory-budget: {exc}") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    options = BuildOptions(
        catalog=args.catalog,
        repository=args.repository,
        manifests=args.manifests,
        jobs=args.jobs,
        namespace=args.namespace,
        force=args.force,
        dry_run=args.dry_run,
        memory_budget=budget,
        storage_options=_storage_options(args.storage_option),
        log_level=logging.DEBUG if args.verbose else logging.WARNING,
    )
    live = {"auto": None, "plain": False, "live": True}[args.progress]
    progress = choose_progress(sys.stdout, live)
    try:
        with sigterm_as_interrupt():  # SIGTERM stops the workers and cleans up as Ctrl-C does
            report = run_build(options, progress, sys.stdout)
    except (CatalogError, DestinationError) as exc:
        progress.close()
        raise UserError(str(exc)) from exc
    if args.summary and report.results:
        with open(args.summary, "a", encoding="utf-8") as handle:
            handle.write(render_markdown_summary(report.results, str(args.catalog)))
    return 0 if report.ok else EXIT_MODEL_FAILED
