"""The export scheduler with real processes but fake exports: crash isolation, worker reuse."""

from __future__ import annotations

import io
from pathlib import Path

from shoal.catalog.display import PlainProgress
from shoal.catalog.execution import Status, run_exports
from shoal.catalog.planning import Action, PlannedModel
from shoal.catalog.publishing import LocalRepository
from shoal.catalog.schema import parse_catalog
from tests.catalog.fake_workers import crash_on_names_starting_with_crash


def plans(tmp_path: Path, names: list[str]) -> list[PlannedModel]:
    (tmp_path / "src").mkdir()
    models = "".join(f"  - {{name: {name}, source: src}}\n" for name in names)
    catalog = parse_catalog(f"defaults: {{pool: p}}\nmodels:\n{models}", tmp_path / "c.yaml")
    return [PlannedModel(m, Action.BUILD, "new", "0" * 64) for m in catalog.models]


def test_a_crashed_export_process_fails_only_its_model(tmp_path: Path) -> None:
    stream = io.StringIO()
    results = run_exports(
        plans(tmp_path, ["one", "crash-me", "two", "three"]),
        LocalRepository(tmp_path / "repo"),
        PlainProgress(stream),
        jobs=2,
        worker=crash_on_names_starting_with_crash,
    )
    by_name = {r.name: r for r in results}
    assert [r.name for r in results] == ["one", "crash-me", "two", "three"]  # catalog order
    assert by_name["crash-me"].status is Status.FAILED
    assert by_name["crash-me"].reason == (
        "the export process exited with -9 (killed: out of memory?)"
    )
    for name in ("one", "two", "three"):
        assert by_name[name].status is Status.BUILT
        assert by_name[name].manifest is not None and by_name[name].manifest.name == name
    assert "FAILED crash-me" in stream.getvalue()


def test_workers_serve_several_exports_and_jobs_bounds_parallelism(tmp_path: Path) -> None:
    stream = io.StringIO()
    names = [f"m{i}" for i in range(5)]
    results = run_exports(
        plans(tmp_path, names),
        LocalRepository(tmp_path / "repo"),
        PlainProgress(stream),
        jobs=2,
        worker=crash_on_names_starting_with_crash,
    )
    assert all(r.status is Status.BUILT for r in results)
    workers = {r.manifest.extra["pid"] for r in results if r.manifest}
    assert len(workers) == 2  # two processes served five exports
    started = [line for line in stream.getvalue().splitlines() if "exporting" in line]
    assert len(started) == 5
    assert all(int(line.split("; ")[1].split()[0]) <= 2 for line in started)  # "N running"
