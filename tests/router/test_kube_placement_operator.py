"""A router's ask reaches the operator, on the real kube-apiserver with the operator running and a
real Triton replica in a network namespace: asking for an evicted model makes the operator load
it back (evicting by policy), and a model in use at a router is not evicted for another."""

from __future__ import annotations

import asyncio
import time

import pytest

from shoal.operator.demand_annotations import ROUTER_IN_USE_UNTIL, parse_time
from shoal.router.kube_placement import KubePlacement
from tests.operator.entries import write_entry
from tests.operator.helpers import loaded_entries, pool_spec
from tests.router.kube_support import api_client, until
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(240)]
MiB = 2**20
POOL = "gpu-a"


def annotations(source: KubePlacement, name: str) -> dict:
    return source._models[name]["metadata"].get("annotations") or {}


def loaded_message(kube, name: str) -> str:
    status = (kube.get("inferencemodels", name) or {}).get("status") or {}
    loaded = [c for c in status.get("conditions") or [] if c["type"] == "Loaded"]
    return loaded[0].get("message", "") if loaded else ""


def phase(kube, name: str) -> str | None:
    return ((kube.get("inferencemodels", name) or {}).get("status") or {}).get("phase")


async def test_an_ask_loads_an_evicted_model_and_demand_keeps_a_model_from_eviction(
    kube, kube_cluster, run_operator, start_replica, tmp_path
):
    repository = tmp_path / "repository"
    for name in ("ma", "mb"):
        write_entry(repository, name, 100 * MiB)
    replica = start_replica(repository)
    api = await api_client(kube_cluster.kubeconfig)
    source = KubePlacement(api, kube.namespace, request_interval_s=1.0, lease_s=6.0)
    try:
        with run_operator():
            kube.create(
                "inferencepools", "InferencePool", POOL, pool_spec(repository, "150Mi")
            ).raise_for_status()
            kube.write_endpoints(POOL, {"gpu-a-0": replica})
            kube.create("inferencemodels", "InferenceModel", "ma", {"pool": POOL})
            await asyncio.to_thread(wait_for, lambda: phase(kube, "ma") == "Ready", 60)
            kube.create("inferencemodels", "InferenceModel", "mb", {"pool": POOL})
            await asyncio.to_thread(wait_for, lambda: phase(kube, "ma") == "Evicted", 60)
            await source.start()
            assert not source.route("ma").ready and source.route("mb").ready

            # The router holds a request for ma: it asks; the operator evicts mb for it.
            started = time.monotonic()
            await source.request_placement("ma")
            await until(source, lambda: source.route("ma").ready, 60, "ma ready after the ask")
            print(f"ask -> evicted model ready: {time.monotonic() - started:.2f} s")
            assert "ma" in loaded_entries(replica) and "mb" not in loaded_entries(replica)
            await until(source, lambda: not source.route("mb").ready, 30, "mb evicted")

            # Requests for ma held or in flight at the router: an ask for mb must not evict it.
            source.report_demand("ma", held=0, in_flight=1)
            await until(
                source, lambda: ROUTER_IN_USE_UNTIL in annotations(source, "ma"), 5, "lease"
            )
            await source.request_placement("mb")
            blocked = await asyncio.to_thread(
                wait_for, lambda: "in-flight requests: ma" in loaded_message(kube, "mb"), 30
            )
            assert blocked and source.route("ma").ready and not source.route("mb").ready
            assert "ma" in loaded_entries(replica)

            # A request for mb is held; ma's requests end. No new ask from the data plane: the
            # source asks again while mb waits, and once ma's lease has run out, mb evicts it.
            source.report_demand("mb", held=1, in_flight=0)
            source.report_demand("ma", held=0, in_flight=0)
            lease_end = parse_time(annotations(source, "ma")[ROUTER_IN_USE_UNTIL])
            await until(source, lambda: source.route("mb").ready, 60, "mb ready after the lease")
            assert time.time() >= lease_end  # not before ma's lease ended
    finally:
        await source.close()
        await api.close()
