"""The values table of docs/install.md, generated from helm/shoal/values.schema.json (types,
descriptions) and values.yaml (defaults). `python scripts/chart-values-table.py --write` rewrites
the table between its markers; tests/helm/test_install_doc.py keeps it current."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "shoal"
DOC = ROOT / "docs" / "install.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def _rows(schema: dict[str, Any], defaults: Any, path: str) -> list[tuple[str, str, str, str]]:
    properties = schema.get("properties")
    if schema.get("type") == "object" and properties:
        rows = []
        for name, child in properties.items():
            sub = defaults.get(name) if isinstance(defaults, dict) else None
            rows += _rows(child, sub, f"{path}.{name}" if path else name)
        return rows
    kind = schema.get("type") or "any"
    if "enum" in schema:
        kind = " \\| ".join(json.dumps(v) for v in schema["enum"])
    default = json.dumps(defaults, separators=(", ", ": "))
    return [(path, kind, default, schema.get("description", ""))]


def table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    lines = ["| Value | Type | Default | Description |", "|---|---|---|---|"]
    for path, kind, default, description in _rows(schema, defaults, ""):
        lines.append(f"| `{path}` | {kind} | `{default}` | {description} |")
    return "\n".join(lines)


def with_table(document: str) -> str:
    head, _, rest = document.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DOC.write_text(with_table(DOC.read_text()))
    else:
        print(table())
