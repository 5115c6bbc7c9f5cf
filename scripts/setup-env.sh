#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment at .venv and installs shoal with the
# extras given as arguments (default: dev). The venv is built from Debian's python3.11 because
# Triton's python-backend stub embeds the system libpython3.11: the steps it runs import packages
# from this same venv (see shared/ENVIRONMENT.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-dev}"
VENV="${SHOAL_VENV:-$ROOT/.venv}"
PY=/usr/bin/python3.11
if [[ ! -x "$PY" ]] || ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv python3.11-dev >/dev/null
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# torch==2.13.0 is the CPU build that lies on this machine's disk; any other pulls a CUDA build.
"$VENV/bin/pip" install -q -e "$ROOT[$EXTRAS]"
