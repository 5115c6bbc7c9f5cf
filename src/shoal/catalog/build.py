"""`shoal build`, end to end: validate -> plan -> export in parallel -> publish -> manifests.

Called by cli.py (and by tests directly). Validation of the whole catalog happens before the
destination is touched or anything is exported. A failed model never stops the others; its
InferenceModel file in OUT is left as it was (still naming the last good entry, which a failed
export leaves in place).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from shoal.catalog.display import PlainProgress, render_summary, summary_counts
from shoal.catalog.execution import ModelResult, run_exports
from shoal.catalog.manifests import build_inference_model, write_manifests
from shoal.catalog.planning import Action, PlannedModel, plan_build
from shoal.catalog.publishing import open_destination
from shoal.catalog.schema import Catalog, load_catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    catalog: Path
    repository: str  # a folder, or an fsspec URL (s3://bucket/prefix, gs://...)
    manifests: Path
    jobs: int = 1
    namespace: str | None = None
    force: bool = False  # rebuild every model, unchanged or not
    dry_run: bool = False  # validate and plan only
    memory_budget: int | None = None  # bytes for parallel exports; None: MemAvailable
    storage_options: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.WARNING  # of the export processes


@dataclass
class BuildReport:
    catalog: Catalog
    plans: list[PlannedModel]
    results: list[ModelResult] = field(default_factory=list)
    manifests_written: list[Path] = field(default_factory=list)
    manifests_removed: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and all(
            p.action is not Action.FAIL for p in self.plans
        )


def describe_plan(plans: list[PlannedModel]) -> str:
    lines = [f"{p.model.name}: {p.action.value} ({p.reason})" for p in plans]
    return "\n".join(lines) + "\n"


def run_build(options: BuildOptions, progress: PlainProgress, out: TextIO) -> BuildReport:
    """Raises CatalogError or DestinationError before any export; otherwise returns the report
    (check `ok`)."""
    catalog = load_catalog(options.catalog, options.namespace)
    destination = open_destination(options.repository, options.storage_options)
    try:
        plans = plan_build(catalog.models, destination, options.force)
        report = BuildReport(catalog, plans)
        counts = {a: sum(p.action is a for p in plans) for a in Action}
        progress.planned(
            f"{len(plans)} models: {counts[Action.BUILD]} to build, {counts[Action.SKIP]} unchanged"
            + (f", {counts[Action.FAIL]} unreadable" if counts[Action.FAIL] else "")
        )
        if options.dry_run:
            out.write(describe_plan(plans))
            return report
        report.results = run_exports(
            plans, destination, progress, options.jobs, options.memory_budget, options.log_level
        )
        resources = {
            r.name: build_inference_model(catalog.model(r.name), r.manifest, destination.uri)
            for r in report.results
            if r.ok and r.manifest is not None
        }
        report.manifests_written, report.manifests_removed = write_manifests(
            options.manifests, catalog.path, resources, keep={m.name for m in catalog.models}
        )
    finally:
        destination.close()
        progress.close()
    out.write("\n" + render_summary(report.results))
    out.write(
        f"{len(report.manifests_written)} InferenceModel manifests in {options.manifests}"
        + (f", {len(report.manifests_removed)} removed" if report.manifests_removed else "")
        + f"; repository {destination.uri}\n"
    )
    log.info("build finished: %s", summary_counts(report.results))
    return report
