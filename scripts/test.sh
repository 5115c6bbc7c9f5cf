#!/usr/bin/env bash
# The README's second command (and CI's): set up everything the tests use, then run them all.
# The test suite starts its own services (Triton, etcd, kube-apiserver) on loopback ports; the
# operator's Triton replicas run in network namespaces it creates (`ip netns`: root and iproute2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh" dev
if ! command -v ip >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi
# kube-apiserver is built once from Debian's source package and cached outside the checkout.
SHOAL_KUBE_APISERVER="$(bash "$ROOT/scripts/build-kube-apiserver.sh")"
export SHOAL_KUBE_APISERVER
cd "$ROOT"
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q -rs "$@"
