"""What do parallel export workers buy a catalog build? `shoal build` of the same catalog of tiny
models with --jobs 1 and --jobs 2 (fresh repository each), then a rebuild of the unchanged
catalog (everything skipped), side by side in one run. Prints wall times and ratios.

    .venv/bin/python benchmarks/catalog_build.py [--models 4]

Tiny random BERT checkpoints (tests/support/tiny_models.py): the build is dominated by worker
start-up (importing torch and transformers) and the fixed costs of each export, which is what
--jobs and worker reuse address. Real models shift the balance towards the export itself.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shoal.catalog.build import BuildOptions, run_build  # noqa: E402
from shoal.catalog.display import PlainProgress  # noqa: E402
from shoal.catalog.execution import Status  # noqa: E402
from tests.support.tiny_models import build_tiny_model  # noqa: E402


def write_catalog(workdir: Path, count: int) -> Path:
    checkpoint = build_tiny_model("bert", workdir / "checkpoints" / "bert")
    lines = [
        "defaults: {runtime: portable, pool: cpu, max_length: 32, max_batch_size: 4}",
        "models:",
    ]
    for index in range(count):
        # Distinct max lengths: distinct hashes, so each model is a real export.
        lines.append(f"  - {{name: m{index}, source: {checkpoint}, max_length: {32 + index}}}")
    path = workdir / "catalog.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_build(catalog: Path, repository: Path, jobs: int) -> tuple[float, list]:
    options = BuildOptions(catalog, str(repository), repository.parent / "manifests", jobs=jobs)
    started = time.monotonic()
    report = run_build(options, PlainProgress(io.StringIO()), io.StringIO())
    return time.monotonic() - started, report.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-catalog-"))
    try:
        catalog = write_catalog(workdir, args.models)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        print(f"catalog: {args.models} tiny BERT models (hidden 32, 2 layers), runtime portable\n")
        rows = []
        for jobs in (1, 2):
            repository = workdir / f"repository-jobs{jobs}"
            elapsed, results = timed_build(catalog, repository, jobs)
            assert all(r.status is Status.BUILT for r in results), results
            per_model = sorted(r.elapsed_s for r in results)
            rows.append((f"build, --jobs {jobs}", elapsed, per_model))
        elapsed, results = timed_build(catalog, workdir / "repository-jobs2", 2)
        assert all(r.status is Status.SKIPPED for r in results), results
        rows.append(("rebuild unchanged (all skipped)", elapsed, []))
        baseline = rows[0][1]
        print(f"{'case':34} {'wall s':>8} {'vs jobs 1':>10}  per-model export s (sorted)")
        for name, elapsed, per_model in rows:
            exports = ", ".join(f"{s:.1f}" for s in per_model)
            print(f"{name:34} {elapsed:8.1f} {baseline / elapsed:9.2f}x  {exports}")
        print(
            "\nThe first export of each worker pays its imports; later ones in the same worker "
            "do not (compare the largest and smallest per-model times)."
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
