#!/usr/bin/env bash
# The README's second command (and CI's): set up everything the tests use, then run them all.
# The test suite starts its own services (Triton, etcd, kube-apiserver) on loopback ports; the
# operator's Triton replicas run in network namespaces it creates (`ip netns`: root and iproute2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-env.sh" dev
# Real Helm for the chart's tests (tests/helm): helm-sdkpy bundles the Helm v4 library. Its
# metadata asks for Python 3.12, so it cannot be in the dev extra; it runs on 3.11.
"$ROOT/.venv/bin/python" -c "import helm_sdkpy" 2>/dev/null \
  || "$ROOT/.venv/bin/pip" install -q --ignore-requires-python "helm-sdkpy==0.1.32" "cffi>=1.16"
# GLiNER (tests of the gliner family, parity against gliner's own predictions): gliner 0.2.29
# declares transformers<5.17, but imports, predicts and exports with the pinned transformers 5.24
# (checked by its parity tests); installed without its dependencies so pip keeps transformers.
"$ROOT/.venv/bin/python" -c "import gliner" 2>/dev/null \
  || "$ROOT/.venv/bin/pip" install -q --no-deps "gliner==0.2.29"
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
