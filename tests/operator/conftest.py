"""Fixtures for the operator's end-to-end tests: a real kube-apiserver (one per session, CRDs
applied), a fresh namespace per test, the operator under kopf's KopfRunner, and real Triton
processes standing in for pool replicas, published through Endpoints the test writes (there is no
endpoints controller).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# Fast timers for tests; read when shoal.operator.handlers is first imported (by KopfRunner).
os.environ.setdefault("SHOAL_OPERATOR_DRIFT_INTERVAL_S", "2")
os.environ.setdefault("SHOAL_OPERATOR_POOL_STATUS_INTERVAL_S", "1")
os.environ.setdefault("SHOAL_OPERATOR_RETRY_BASE_S", "1")
os.environ.setdefault("SHOAL_OPERATOR_RETRY_MAX_S", "4")

from shoal.operator.crds import all_crds  # noqa: E402
from shoal.runtime.triton import TritonServer  # noqa: E402
from tests.operator.helpers import Kube  # noqa: E402
from tests.support.kube import KubeCluster, KubeUnavailable, running_cluster, wait_for  # noqa: E402
from tests.support.triton import triton_server  # noqa: E402, F401  (fixture)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    try:
        context = running_cluster()
        cluster = context.__enter__()
    except KubeUnavailable as exc:
        pytest.fail(str(exc))
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        with cluster.http() as http:
            for crd in all_crds():
                http.post(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd
                ).raise_for_status()
            for crd in all_crds():
                wait_for(
                    lambda crd=crd: _established(http, crd["metadata"]["name"]),
                    30,
                    what="CRD established",
                )
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        context.__exit__(None, None, None)


def _established(http: httpx.Client, name: str) -> bool:
    crd = http.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").json()
    return any(
        c["type"] == "Established" and c["status"] == "True"
        for c in (crd.get("status") or {}).get("conditions") or []
    )


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


def _host_address() -> str | None:
    """This machine's own non-loopback IPv4 address (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="session")
def replica_address() -> str:
    """Where the test's Triton replicas are reached through Endpoints. The API server rejects
    loopback addresses in Endpoints (as the endpoints controller never writes them), so the
    replicas listen on all interfaces and are published under the machine's own address."""
    address = _host_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address: Endpoints cannot point at loopback")
    return address


@pytest.fixture
def start_replica(triton_server, replica_address) -> Callable[[Path], TritonServer]:  # noqa: F811
    def start(repository: Path) -> TritonServer:
        server = triton_server(
            repository, extra_args=["--http-address=0.0.0.0", "--metrics-address=0.0.0.0"]
        )
        server.replica_address = replica_address  # type: ignore[attr-defined]
        return server

    return start


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "repository"
    path.mkdir()
    return path
