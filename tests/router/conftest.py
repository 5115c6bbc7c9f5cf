"""Real Triton servers for the router's tests, started once per session: `triton_a` serves the
doubler model `alpha`, `triton_b` serves `beta` (two models on two different replicas). The
cluster tests use the operator's e2e fixtures (a namespace on the real kube-apiserver, the
operator under KopfRunner, Triton replicas in network namespaces: tests/operator/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator import conftest as operator_fixtures
from tests.support.triton import start_triton, triton_server, write_doubler  # noqa: F401

kube = operator_fixtures.kube
run_operator = operator_fixtures.run_operator
start_replica = operator_fixtures.start_replica


@pytest.fixture(scope="session")
def doubler_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("router-doublers")
    for name in ("alpha", "beta"):
        write_doubler(repository, name)
    return repository


def _session_triton(repository: Path, models: list[str], tmp_path_factory, **kwargs) -> Iterator:
    from shoal.runtime.installation import TritonNotInstalled, locate_triton

    try:
        installation = locate_triton()
    except TritonNotInstalled as exc:
        pytest.fail(f"Triton is not available: {exc}; run `bash scripts/setup-env.sh dev`")
    log_path = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    server = start_triton(
        repository, load_models=models, installation=installation, log_path=log_path, **kwargs
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton_a(doubler_repository, tmp_path_factory) -> Iterator:
    yield from _session_triton(doubler_repository, ["alpha"], tmp_path_factory)


@pytest.fixture(scope="session")
def triton_b(doubler_repository, tmp_path_factory) -> Iterator:
    yield from _session_triton(doubler_repository, ["beta"], tmp_path_factory)
