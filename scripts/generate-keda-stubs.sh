#!/usr/bin/env bash
# Regenerates the Python modules of KEDA's external scaler protocol from
# src/shoal/router/externalscaler/externalscaler.proto (needs grpcio-tools: the dev extra).
# tests/router/test_keda_stubs.py fails when the committed modules differ from what this makes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/src}"
python="${PYTHON:-python}"
"$python" -m grpc_tools.protoc -I "$root/src" --python_out="$out" --grpc_python_out="$out" \
  "$root/src/shoal/router/externalscaler/externalscaler.proto"
