#!/usr/bin/env bash
# The one place the chart's CRDs come from: the operator's own (src/shoal/operator/crds.py,
# `shoal operator crds --write`), copied into helm/shoal/crds/. tests/helm/test_chart_files.py
# keeps them equal; run this after changing crds.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "from shoal.cli import main; main()" operator crds --write >/dev/null
rm -f helm/shoal/crds/*.yaml
cp src/shoal/operator/crds/*.yaml helm/shoal/crds/
ls helm/shoal/crds/
