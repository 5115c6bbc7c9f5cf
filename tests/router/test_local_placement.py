"""The router's placement source for `shoal serve`, on a real Triton with tiny embedders: asking
for an evicted entry loads it (evicting by policy) and wakes waiters; a model in use at the router
is not evicted; what can never load becomes the route's permanent error."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from shoal.fleet.replica import Replica
from shoal.manifest import Manifest
from shoal.model_repository.repository import check_entry
from shoal.router.local_placement import LOCAL_POOL, LocalPlacement
from shoal.runtime.controller import LocalController
from tests.runtime.entries import export_tiny_embedders

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

NAMES = ["ma", "mb"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("local-placement") / "repository"
    export_tiny_embedders(tiny_model("bert"), path, NAMES)
    return path


def replica_of(server) -> Replica:
    return Replica("local", "127.0.0.1", server.http_port, server.metrics_port, server.grpc_port)


async def wait_for(source: LocalPlacement, condition, timeout_s: float = 60.0) -> float:
    """Wait on the source's change event (no polling) until `condition()`; seconds waited."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not condition():
            await source.changed().wait()
    return time.monotonic() - started


async def test_asking_for_an_evicted_entry_loads_it_and_wakes_waiters(triton_server, repository):
    server = triton_server(repository)
    manifests = {n: Manifest.read(repository / n) for n in NAMES}
    one = max(m.memory_bytes for m in manifests.values())
    controller = LocalController(server.http_url, manifests, budget_bytes=int(one * 1.5))
    source = LocalPlacement(controller, replica_of(server), max_hold_s=30)
    await controller.start(load=["ma"])
    assert sorted(source.models()) == NAMES
    assert source.route("nope") is None
    route = source.route("ma")
    assert route.ready == (replica_of(server),) and route.pool == LOCAL_POOL
    assert route.max_hold_s == 30
    assert source.route("mb").ready == ()

    await source.request_placement("mb")
    await source.request_placement("mb")  # a second ask while loading starts nothing more
    assert len([t for t in source._loads.values() if not t.done()]) == 1
    await wait_for(source, lambda: bool(source.route("mb").ready))
    assert source.route("ma").ready == ()  # evicted to make room (budget for one)
    assert source.route("mb").permanent_error is None
    await source.close()


async def test_a_model_in_use_at_the_router_is_not_evicted_until_its_demand_ends(
    triton_server, repository
):
    server = triton_server(repository)
    manifests = {n: Manifest.read(repository / n) for n in NAMES}
    one = max(m.memory_bytes for m in manifests.values())
    controller = LocalController(server.http_url, manifests, budget_bytes=int(one * 1.5))
    source = LocalPlacement(controller, replica_of(server))
    await controller.start(load=["ma"])
    source.report_demand("ma", held=0, in_flight=2)
    await source.request_placement("mb")
    await source._loads["mb"]
    assert source.route("ma").ready and not source.route("mb").ready
    assert source.route("mb").permanent_error is None  # waits for room, not failed

    source.report_demand("ma", held=0, in_flight=0)  # the router's requests finished
    await wait_for(source, lambda: bool(source.route("mb").ready))
    assert not source.route("ma").ready
    await source.close()


async def test_a_broken_entry_is_a_permanent_error_naming_the_problem(
    triton_server, repository, tmp_path
):
    broken = tmp_path / "repository"
    shutil.copytree(repository, broken)
    (broken / "mb__tokenize" / "1" / "model.py").unlink()
    server = triton_server(broken)
    manifests = {n: Manifest.read(broken / n) for n in NAMES}
    controller = LocalController(
        server.http_url, manifests, entry_check=lambda name: check_entry(broken, name).problems
    )
    source = LocalPlacement(controller, replica_of(server))
    await source.request_placement("mb")
    await wait_for(source, lambda: source.route("mb").permanent_error is not None)
    assert "mb__tokenize/1/model.py is missing" in source.route("mb").permanent_error
    assert not source.route("mb").ready
    await source.close()


async def test_a_model_that_cannot_fit_beside_the_pinned_ones_is_a_permanent_error(
    triton_server, repository
):
    server = triton_server(repository)
    manifests = {n: Manifest.read(repository / n) for n in NAMES}
    one = max(m.memory_bytes for m in manifests.values())
    controller = LocalController(
        server.http_url, manifests, budget_bytes=int(one * 1.5), pinned={"ma"}
    )
    source = LocalPlacement(controller, replica_of(server))
    await controller.start(load=["ma"])
    await source.request_placement("mb")
    await wait_for(source, lambda: source.route("mb").permanent_error is not None)
    error = source.route("mb").permanent_error
    assert "'mb'" in error and "pinned" in error and "--memory-budget" in error
    assert source.route("ma").ready
    await source.close()
