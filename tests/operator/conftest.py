"""Fixtures for the operator's end-to-end tests: a fresh Kubernetes namespace per test on the
session's real kube-apiserver (`kube_cluster`, tests/support/kube.py), the operator under kopf's
KopfRunner, and real Triton processes standing in for pool replicas, each in its own network
namespace (tests/support/netns.py) and published through Endpoints the test writes under its
address, as the endpoints controller would publish pod IPs.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The operator's fast test timers are set in tests/conftest.py, before any test module imports
# shoal.operator.settings (which reads them once).
from shoal.runtime.triton import TritonServer
from tests.operator.helpers import Kube
from tests.support.kube import KubeCluster
from tests.support.netns import NetnsHost
from tests.support.triton import triton_server  # noqa: F401  (fixture)


@pytest.fixture
def kube(kube_cluster: KubeCluster) -> Iterator[Kube]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    with kube_cluster.http() as http:
        http.post(
            "/api/v1/namespaces",
            json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        ).raise_for_status()
        yield Kube(http, namespace)


@pytest.fixture
def run_operator(kube: Kube) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """`with run_operator() as runner:` runs the operator on the test's namespace."""
    from kopf.testing import KopfRunner

    def start() -> contextlib.AbstractContextManager[Any]:
        args = [
            "run",
            "-m",
            "shoal.operator.handlers",
            "--standalone",
            "--namespace",
            kube.namespace,
        ]
        return KopfRunner(args, timeout=60)

    return start


@pytest.fixture
def start_replica(
    netns_host: Callable[[], NetnsHost],
    triton_server,  # noqa: F811
) -> Callable[..., TritonServer]:
    """`start_replica(repository)` starts a Triton replica the way a pod runs one: in its own
    network namespace, on its own address (198.18.N.2, what Endpoints list) and the standard
    ports. `start_replica(repository, host=old.host)` restarts a container in the same pod."""

    def start(repository: Path, host: NetnsHost | None = None) -> TritonServer:
        host = host or netns_host()
        server = triton_server(repository, network_namespace=host.name, bind_address=host.address)
        server.host = host  # type: ignore[attr-defined]
        return server

    return start


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "repository"
    path.mkdir()
    return path
