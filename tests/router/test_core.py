"""The router's core without a network: holding, overflow, deadlines, permanent errors, retries,
a replica leaving mid-request, stale placement, demand reporting. The placement source is the
real in-memory StaticPlacement (probing off; the test changes placement); attempts are
coroutines standing in for the upstream call."""

from __future__ import annotations

import asyncio

import pytest

from shoal.fleet.replica import Replica
from shoal.router.core import Router
from shoal.router.errors import ErrorKind, ModelMissingOnReplica, ReplicaUnreachable, RouterError
from shoal.router.settings import RouterSettings
from shoal.router.static_source import StaticPlacement, StaticRoute

A = Replica("a", "127.0.0.1", 1)
B = Replica("b", "127.0.0.1", 2)
C = Replica("c", "127.0.0.1", 3)


def make_router(max_hold_s: float = 5.0, **settings) -> tuple[Router, StaticPlacement]:
    source = StaticPlacement(
        [
            StaticRoute("m", (A, B, C), pool="p1", max_hold_s=max_hold_s),
            StaticRoute("n", (A,), pool="p2", max_hold_s=max_hold_s),
        ],
        probe_interval_s=None,
    )
    return Router(source, RouterSettings(metrics_port=None, **settings)), source


async def answer_with_replica(replica: Replica, _timeout_s: float) -> str:
    return replica.name


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_request_for_a_ready_model_goes_to_a_ready_replica_only() -> None:
    router, source = make_router()
    source.set_ready("m", [B])
    assert {await router.call("m", answer_with_replica) for _ in range(5)} == {"b"}


async def test_least_in_flight_replica_is_chosen_first() -> None:
    router, source = make_router()
    source.set_ready("m", [A, B])
    release = asyncio.Event()

    async def slow(replica: Replica, _t: float) -> str:
        await release.wait()
        return replica.name

    first = asyncio.create_task(router.call("m", slow))
    second = asyncio.create_task(router.call("m", slow))
    await until(lambda: sum(router._in_flight_by_replica.values()) == 2)
    assert dict(router._in_flight_by_replica) == {"a": 1, "b": 1}
    release.set()
    assert sorted(await asyncio.gather(first, second)) == ["a", "b"]


async def test_a_held_request_is_dispatched_when_the_model_becomes_ready_and_placement_is_asked_once() -> (
    None
):
    router, source = make_router()
    calls = [asyncio.create_task(router.call("m", answer_with_replica)) for _ in range(3)]
    await until(lambda: source.demand.get("m") == (3, 0))
    assert source.placement_requests == ["m"]
    assert router.demand_by_pool() == {"p1": (3, 0)}
    source.set_ready("m", [C])
    assert await asyncio.gather(*calls) == ["c", "c", "c"]
    assert source.demand["m"] == (0, 0)
    count = router.metrics.registry.get_sample_value(
        "shoal_router_hold_seconds_count", {"model": "m", "outcome": "dispatched"}
    )
    assert count == 3


async def test_demand_changes_set_the_demand_event() -> None:
    router, source = make_router()
    event = router.demand_changed()
    task = asyncio.create_task(router.call("n", answer_with_replica))
    await asyncio.wait_for(event.wait(), 1)
    assert router.demand_by_pool()["p2"] == (1, 0)
    source.set_ready("n", [A])
    await task
    assert router.demand_by_pool()["p2"] == (0, 0)


async def test_past_the_deadline_a_held_request_fails_naming_the_model() -> None:
    router, _ = make_router(max_hold_s=0.05)
    with pytest.raises(RouterError) as caught:
        await router.call("m", answer_with_replica)
    assert caught.value.kind is ErrorKind.HOLD_DEADLINE
    assert "'m'" in caught.value.message and "retry after" in caught.value.message


async def test_the_clients_timeout_replaces_max_hold() -> None:
    router, _ = make_router(max_hold_s=60)
    started = asyncio.get_running_loop().time()
    with pytest.raises(RouterError):
        await router.call("m", answer_with_replica, client_timeout_s=0.05)
    assert asyncio.get_running_loop().time() - started < 1


async def test_over_the_bound_a_request_is_refused_at_once() -> None:
    router, source = make_router(max_held_per_model=2)
    held = [asyncio.create_task(router.call("m", answer_with_replica)) for _ in range(2)]
    await until(lambda: source.demand.get("m", (0, 0))[0] == 2)
    with pytest.raises(RouterError) as caught:
        await router.call("m", answer_with_replica)
    assert caught.value.kind is ErrorKind.HOLD_OVERFLOW
    source.set_ready("m", [A])
    assert await asyncio.gather(*held) == ["a", "a"]


async def test_a_permanent_placement_error_fails_held_requests_at_once() -> None:
    router, source = make_router()
    task = asyncio.create_task(router.call("m", answer_with_replica))
    await until(lambda: source.demand.get("m") == (1, 0))
    source.set_permanent_error("m", "entry invalid: tokenizer.json missing")
    with pytest.raises(RouterError) as caught:
        await task
    assert caught.value.kind is ErrorKind.MODEL_CANNOT_LOAD
    assert "tokenizer.json missing" in caught.value.message


async def test_a_cancelled_held_request_is_dropped_and_counted() -> None:
    router, source = make_router()
    task = asyncio.create_task(router.call("m", answer_with_replica))
    await until(lambda: source.demand.get("m") == (1, 0))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.demand["m"] == (0, 0)
    count = router.metrics.registry.get_sample_value(
        "shoal_router_hold_seconds_count", {"model": "m", "outcome": "cancelled"}
    )
    assert count == 1


async def test_an_unreachable_replica_sends_the_request_to_another() -> None:
    router, source = make_router()
    source.set_ready("m", [A, B])
    tried = []

    async def a_is_down(replica: Replica, _t: float) -> str:
        tried.append(replica.name)
        if replica is A:
            raise ReplicaUnreachable("connection refused")
        return replica.name

    results = [await router.call("m", a_is_down) for _ in range(4)]
    assert results == ["b"] * 4
    assert set(tried) <= {"a", "b"}


async def test_retries_stop_after_max_retries() -> None:
    router, source = make_router(max_retries=2)
    source.set_ready("m", [A, B, C])
    tried = []

    async def all_down(replica: Replica, _t: float) -> str:
        tried.append(replica.name)
        raise ReplicaUnreachable("connection reset")

    with pytest.raises(RouterError) as caught:
        await router.call("m", all_down)
    assert caught.value.kind is ErrorKind.REPLICA_UNREACHABLE
    assert sorted(tried) == ["a", "b", "c"]


async def test_a_replica_leaving_the_ready_set_mid_request_gets_the_request_retried() -> None:
    router, source = make_router()
    await router.start()
    source.set_ready("m", [A])
    started = asyncio.Event()

    async def hangs_on_a(replica: Replica, _t: float) -> str:
        if replica is A:
            started.set()
            await asyncio.Event().wait()
        return replica.name

    task = asyncio.create_task(router.call("m", hangs_on_a))
    await started.wait()
    source.set_ready("m", [B])
    assert await asyncio.wait_for(task, 2) == "b"
    assert (
        router.metrics.registry.get_sample_value(
            "shoal_router_retries_total", {"model": "m", "reason": "replica_left"}
        )
        == 1
    )
    await router.close()


async def test_unknown_model_on_a_replica_holds_the_request_again() -> None:
    router, source = make_router()
    source.set_ready("m", [A])

    async def a_lost_it(replica: Replica, _t: float) -> str:
        if replica is A:
            raise ModelMissingOnReplica("Request for unknown model: 'm' is not found")
        return replica.name

    task = asyncio.create_task(router.call("m", a_lost_it))
    await until(lambda: source.demand.get("m") == (1, 0))
    assert source.placement_requests == ["m"]
    source.set_ready("m", [B])
    assert await task == "b"


async def test_a_stale_ready_replica_past_the_deadline_names_what_it_said() -> None:
    router, source = make_router(max_hold_s=0.1)
    source.set_ready("m", [A])

    async def unknown(replica: Replica, _t: float) -> str:
        raise ModelMissingOnReplica("Request for unknown model: 'm' is not found")

    with pytest.raises(RouterError) as caught:
        await router.call("m", unknown)
    assert "is not found" in caught.value.message


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "a b", "x\\y", ".hidden"])
async def test_model_names_with_path_characters_are_refused(name: str) -> None:
    router, _ = make_router()
    with pytest.raises(RouterError) as caught:
        await router.call(name, answer_with_replica)
    assert caught.value.kind is ErrorKind.INVALID_MODEL_NAME


async def test_an_unknown_model_lists_the_known_ones() -> None:
    router, _ = make_router()
    with pytest.raises(RouterError) as caught:
        await router.call("nope", answer_with_replica)
    assert caught.value.kind is ErrorKind.MODEL_NOT_FOUND
    assert "known models: m, n" in caught.value.message
