"""Fixtures for the router's tests: real Triton servers (tests/support/triton.py) and, for the
cluster tests, the operator's e2e fixtures (a namespace on the real kube-apiserver, the operator
under KopfRunner, Triton replicas in network namespaces: tests/operator/conftest.py)."""

from tests.operator.conftest import (  # noqa: F401  (fixtures)
    kube,
    repository,
    run_operator,
    start_replica,
)
from tests.support.triton import triton_server  # noqa: F401  (fixture)
