#!/usr/bin/env bash
# The README's first command: set up, then run `shoal quickstart` (offline, CPU, no cluster).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh" "serve,export,quickstart"
exec "$ROOT/.venv/bin/shoal" quickstart "$@"
