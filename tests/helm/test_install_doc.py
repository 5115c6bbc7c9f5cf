"""docs/install.md's values table is the one generated from the chart's schema and values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_values_table_is_current():
    spec = importlib.util.spec_from_file_location(
        "values_table", ROOT / "scripts" / "chart-values-table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    document = module.DOC.read_text()
    assert module.with_table(document) == document, (
        "docs/install.md's values table is stale: run `python scripts/chart-values-table.py --write`"
    )
