#!/usr/bin/env bash
# The README's second command (and CI's): set up everything the tests use, then run them all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh" dev
cd "$ROOT"
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q -rs "$@"
