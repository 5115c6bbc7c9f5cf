"""The router's placement source on the real kube-apiserver: routes follow InferenceModel status
and the pool's Endpoints within a second; asks and demand reach the InferenceModel as
annotations (rate-limited); a cut connection to the API server is recovered by listing again."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest

from shoal.contract import Task
from shoal.operator.demand_annotations import PLACEMENT_REQUESTED, ROUTER_IN_USE_UNTIL, parse_time
from shoal.router.kube_placement import KubePlacement
from tests.model_repository.sample_manifests import sample_manifest
from tests.router.kube_support import TcpRelay, api_client, until

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]
log = logging.getLogger(__name__)
POOL = "gpu-a"


def pod(address: str) -> SimpleNamespace:
    """What Kube.write_endpoints reads of a replica (no Triton needed: routing only)."""
    return SimpleNamespace(bind_address=address, http_port=8000, metrics_port=8002)


def set_status(kube, name: str, status: dict) -> None:
    kube.http.patch(
        kube._custom("inferencemodels", name) + "/status",
        json={"status": status},
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


def annotations(kube, name: str) -> dict:
    return kube.get("inferencemodels", name)["metadata"].get("annotations") or {}


@pytest.fixture
async def source(kube, kube_cluster, tmp_path):
    # A mounted copy of the model repository: the minilm entry's manifest only.
    (tmp_path / "repository" / "minilm").mkdir(parents=True)
    sample_manifest(Task.EMBED, name="minilm").write(tmp_path / "repository" / "minilm")
    api = await api_client(kube_cluster.kubeconfig)
    placement = KubePlacement(
        api, kube.namespace, request_interval_s=2.0, lease_s=8.0, repository=tmp_path / "repository"
    )
    yield placement
    await placement.close()
    await api.close()


async def test_routes_follow_status_and_endpoints_within_a_second(kube, source):
    kube.create(
        "inferencemodels", "InferenceModel", "minilm", {"pool": POOL, "maxHoldSeconds": 20}
    ).raise_for_status()
    kube.create(
        "inferencemodels", "InferenceModel", "renamed", {"pool": POOL, "entry": "bge"}
    ).raise_for_status()
    await source.start()
    assert list(source.models()) == ["bge", "minilm"]  # clients call entries
    assert source.route("nope") is None
    route = source.route("minilm")
    assert (route.pool, route.ready, route.max_hold_s) == (POOL, (), 20.0)
    assert source.route("bge").max_hold_s == 60.0  # the default
    assert source.route("minilm").manifest.task == Task.EMBED  # for the /v1 endpoints
    assert source.route("bge").manifest is None  # no entry in the mounted repository

    kube.write_endpoints(POOL, {"gpu-a-0": pod("198.18.0.2"), "gpu-a-1": pod("198.18.0.3")})
    started = time.monotonic()
    await asyncio.to_thread(set_status, kube, "minilm", {"pool": POOL, "replicas": ["gpu-a-1"]})
    took = await until(source, lambda: source.route("minilm").ready, 5, "minilm ready")
    elapsed = time.monotonic() - started
    log.info("status patched -> route ready in %.1f ms (seen by the watch)", elapsed * 1000)
    print(f"status change -> route change: {elapsed * 1000:.1f} ms")
    assert elapsed <= 1.0 and took <= 1.0
    (replica,) = source.route("minilm").ready
    assert (replica.name, replica.host, replica.http_port) == ("gpu-a-1", "198.18.0.3", 8000)

    # The replica leaves the Endpoints (pod not ready): no longer a route, even if listed.
    await asyncio.to_thread(kube.write_endpoints, POOL, {"gpu-a-0": pod("198.18.0.2")})
    await until(source, lambda: not source.route("minilm").ready, 5, "minilm unrouted")

    # Moving to another pool: the old copy serves until the operator unloads it.
    kube.write_endpoints("gpu-b", {"gpu-b-0": pod("198.18.0.9")})
    moving = {"pool": "gpu-b", "replicas": [],
              "movedFrom": {"pool": POOL, "entry": "minilm", "replicas": ["gpu-a-0"]}}  # fmt: skip
    await asyncio.to_thread(set_status, kube, "minilm", moving)
    await until(source, lambda: source.route("minilm").ready, 5, "old copy routed")
    assert [r.name for r in source.route("minilm").ready] == ["gpu-a-0"]
    moved = {"replicas": ["gpu-b-0"], "movedFrom": None}
    await asyncio.to_thread(set_status, kube, "minilm", moved)
    await until(source, lambda: [r.name for r in source.route("minilm").ready] == ["gpu-b-0"],
                5, "new copy only")  # fmt: skip

    # A spec that can never work: held requests fail at once with the operator's message.
    invalid = {
        "phase": "Failed",
        "conditions": [
            {"type": "Valid", "status": "False", "reason": "TooLarge", "message": "too big"}
        ],
    }
    await asyncio.to_thread(set_status, kube, "renamed", invalid)
    await until(source, lambda: source.route("bge").permanent_error, 5, "bge invalid")
    assert source.route("bge").permanent_error == "InferenceModel renamed: too big"
    await asyncio.to_thread(kube.delete, "inferencemodels", "renamed")
    await until(source, lambda: source.route("bge") is None, 5, "bge gone")


async def test_asks_and_demand_are_annotations_written_only_when_they_mean_something(kube, source):
    kube.create("inferencemodels", "InferenceModel", "minilm", {"pool": POOL}).raise_for_status()
    await source.start()
    before = time.time()
    await source.request_placement("minilm")
    await source.request_placement("minilm")  # inside the interval: no second write
    await until(source, lambda: PLACEMENT_REQUESTED in _seen(source, "minilm"), 5, "the ask")
    first = _seen(source, "minilm")[PLACEMENT_REQUESTED]
    assert parse_time(first) >= before - 1

    source.report_demand("minilm", held=1, in_flight=0)
    await until(source, lambda: ROUTER_IN_USE_UNTIL in _seen(source, "minilm"), 5, "the lease")
    lease = parse_time(_seen(source, "minilm")[ROUTER_IN_USE_UNTIL])
    assert time.time() < lease <= time.time() + 8.5
    source.report_demand("minilm", held=3, in_flight=1)  # more demand, lease still fresh
    await asyncio.sleep(0.3)  # let a (wrong) write land if one was started
    assert parse_time(annotations(kube, "minilm")[ROUTER_IN_USE_UNTIL]) == lease
    # Requests held for a long time without a new report: the lease is refreshed before it ends.
    await until(
        source,
        lambda: parse_time(_seen(source, "minilm")[ROUTER_IN_USE_UNTIL]) > lease,
        10,
        "the lease refreshed",
    )
    source.report_demand("minilm", held=0, in_flight=0)

    await asyncio.sleep(2.0)  # past the ask interval: a new ask is written
    await source.request_placement("minilm")
    await until(
        source, lambda: _seen(source, "minilm")[PLACEMENT_REQUESTED] != first, 5, "second ask"
    )


def _seen(source: KubePlacement, name: str) -> dict:
    return source._models[name]["metadata"].get("annotations") or {}


async def test_a_cut_connection_to_the_api_server_is_recovered_by_listing_again(kube, kube_cluster):
    url = urlparse(kube_cluster.server)
    relay = TcpRelay(url.hostname, url.port)
    await relay.start()
    api = await api_client(kube_cluster.kubeconfig, server=f"https://127.0.0.1:{relay.port}")
    source = KubePlacement(api, kube.namespace)
    try:
        kube.create(
            "inferencemodels", "InferenceModel", "minilm", {"pool": POOL}
        ).raise_for_status()
        kube.write_endpoints(POOL, {"gpu-a-0": pod("198.18.0.2")})
        await source.start()
        assert source.model_watch.relists == 1
        await relay.cut()
        # While the router cannot see the API server, the model gets placed and another added.
        await asyncio.to_thread(set_status, kube, "minilm", {"pool": POOL, "replicas": ["gpu-a-0"]})
        await asyncio.to_thread(
            kube.create, "inferencemodels", "InferenceModel", "bge", {"pool": POOL}
        )
        await asyncio.sleep(1.0)
        assert not source.route("minilm").ready  # it could not have seen it
        cut_over = time.monotonic()
        await relay.restore()
        await until(
            source,
            lambda: source.route("minilm").ready and source.route("bge") is not None,
            15,
            "the view after the API server came back",
        )
        log.info("recovered %.2f s after the connection came back", time.monotonic() - cut_over)
        assert source.model_watch.relists >= 2  # listed again, not only resumed
    finally:
        await source.close()
        await api.close()
        await relay.cut()


async def test_peers_are_the_other_ready_routers_of_the_router_service(kube, source):
    body = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "shoal-router"},
        "subsets": [
            {
                "addresses": [
                    {"ip": "198.18.0.7", "targetRef": {"kind": "Pod", "name": "router-a"}},
                    {"ip": "198.18.0.8", "targetRef": {"kind": "Pod", "name": "router-b"}},
                ],
                "notReadyAddresses": [
                    {"ip": "198.18.0.9", "targetRef": {"kind": "Pod", "name": "router-c"}}
                ],
                "ports": [{"name": "http", "port": 8000}, {"name": "scaler", "port": 8003}],
            }
        ],
    }
    kube.http.post(f"/api/v1/namespaces/{kube.namespace}/endpoints", json=body).raise_for_status()
    await source.start()
    assert source.peers("shoal-router", "scaler", own_pod="router-a") == ["198.18.0.8:8003"]
    assert source.peers("shoal-router", "scaler", own_pod=None) == [
        "198.18.0.7:8003",
        "198.18.0.8:8003",
    ]
    assert source.peers("shoal-router", "grpc", own_pod=None) == []  # no such port
    assert source.peers("elsewhere", "scaler", own_pod=None) == []
