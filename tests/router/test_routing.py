"""Affinity, holding through a cold start, deadlines and overflow, against real Tritons: `alpha`
is loaded only on triton_a and `beta` only on triton_b."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shoal.router.static_source import StaticRoute
from tests.router.support import RouterThread, replica_of, wait_for

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

DISPATCH_GOAL_S = 0.050
BODY = json.dumps(
    {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()


def inference_count(server, model: str) -> int:
    client = httpclient.InferenceServerClient(server.http_address)
    stats = client.get_inference_statistics(model)["model_stats"]
    return sum(s["inference_count"] for s in stats)


def test_each_model_goes_only_to_the_replica_where_it_is_ready(triton_a, triton_b) -> None:
    a, b = replica_of(triton_a), replica_of(triton_b)
    routes = [StaticRoute("alpha", (a, b)), StaticRoute("beta", (a, b))]
    before = {m: inference_count(s, m) for m, s in (("alpha", triton_a), ("beta", triton_b))}
    with RouterThread(routes, probe_interval_s=0.5) as running:
        assert running.source.route("alpha").ready == (a,)
        assert running.source.route("beta").ready == (b,)
        client = httpclient.InferenceServerClient(running.http_address)
        x = httpclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        for _ in range(20):
            client.infer("alpha", [x])
            client.infer("beta", [x])
    assert inference_count(triton_a, "alpha") - before["alpha"] == 20
    assert inference_count(triton_b, "beta") - before["beta"] == 20


def _held_router(triton_a, **settings) -> RouterThread:
    # Probing off: the test decides when `alpha` counts as ready.
    return RouterThread([StaticRoute("alpha", (replica_of(triton_a),), max_hold_s=30)], **settings)


def _direct_latency_s(triton_a) -> float:
    client = httpclient.InferenceServerClient(triton_a.http_address)
    x = httpclient.InferInput("X", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    client.infer("alpha", [x])
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        client.infer("alpha", [x])
        timings.append(time.perf_counter() - started)
    return min(timings)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_a_held_request_is_answered_within_50_ms_of_the_model_becoming_ready(
    triton_a, protocol: str
) -> None:
    direct_s = _direct_latency_s(triton_a)
    with _held_router(triton_a) as running:
        if protocol == "http":
            session = aiohttp.ClientSession()
            url = f"{running.http_url}/v2/models/alpha/infer"
            request = asyncio.ensure_future(session.post(url, data=BODY))
        else:
            client = grpcaio.InferenceServerClient(running.grpc_address)
            x = grpcaio.InferInput("X", [1, 2], "FP32")
            x.set_data_from_numpy(np.ones((1, 2), np.float32))
            request = asyncio.ensure_future(client.infer("alpha", [x]))
        await asyncio.to_thread(
            wait_for, lambda: running.source.demand.get("alpha") == (1, 0), 10, "held"
        )
        assert running.source.placement_requests == ["alpha"]
        await asyncio.sleep(0.2)
        assert not request.done()
        marked = time.perf_counter()
        running.in_loop(running.source.set_ready, "alpha", running.routes[0].replicas)
        answer = await request
        elapsed = time.perf_counter() - marked
        if protocol == "http":
            assert answer.status == 200, await answer.text()
            await answer.release()
            await session.close()
        else:
            assert answer.as_numpy("Y").tolist() == [[2.0, 2.0]]
            await client.close()
    print(
        f"{protocol}: answered {elapsed * 1000:.1f} ms after readiness (direct call {direct_s * 1000:.1f} ms)"
    )
    assert elapsed - direct_s < DISPATCH_GOAL_S, (elapsed, direct_s)


def test_past_the_deadline_http_gets_503_with_retry_after_naming_the_model(triton_a) -> None:
    with _held_router(triton_a) as running:
        client = httpclient.InferenceServerClient(running.http_address)
        started = time.monotonic()
        response = client._post(
            "v2/models/alpha/infer", BODY, headers={"X-Shoal-Timeout": "0.3"}, query_params=None
        )
        assert 0.3 <= time.monotonic() - started < 2
        assert response.status_code == 503
        assert response.get("retry-after") == "5"
        message = json.loads(response.read())["error"]
        assert "'alpha'" in message and "not ready" in message
        assert (
            running.metric("shoal_router_hold_seconds_count", model="alpha", outcome="deadline")
            == 1
        )


def test_past_max_hold_grpc_gets_unavailable_naming_the_model(triton_a) -> None:
    routes = [StaticRoute("alpha", (replica_of(triton_a),), max_hold_s=0.3)]
    with RouterThread(routes) as running:
        client = grpcclient.InferenceServerClient(running.grpc_address)
        x = grpcclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("alpha", [x])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "'alpha'" in caught.value.message()


def test_a_grpc_client_deadline_ends_the_hold(triton_a) -> None:
    with _held_router(triton_a) as running:
        client = grpcclient.InferenceServerClient(running.grpc_address)
        x = grpcclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        started = time.monotonic()
        with pytest.raises(InferenceServerException):
            client.infer("alpha", [x], client_timeout=0.3)
        assert time.monotonic() - started < 2
        wait_for(lambda: running.source.demand.get("alpha") == (0, 0), 5, "hold ended")
        ended = sum(
            running.metric("shoal_router_hold_seconds_count", model="alpha", outcome=outcome)
            for outcome in ("cancelled", "deadline")
        )
        assert ended == 1


async def test_over_the_hold_bound_http_gets_503_and_grpc_unavailable(triton_a) -> None:
    with _held_router(triton_a, max_held_per_model=2) as running:
        session = aiohttp.ClientSession()
        url = f"{running.http_url}/v2/models/alpha/infer"
        held = [asyncio.ensure_future(session.post(url, data=BODY)) for _ in range(2)]
        await asyncio.to_thread(
            wait_for, lambda: running.source.demand.get("alpha") == (2, 0), 10, "2 held"
        )
        async with session.post(url, data=BODY) as refused:
            assert refused.status == 503
            assert refused.headers["Retry-After"] == "5"
            assert "already held" in (await refused.json())["error"]
        client = grpcaio.InferenceServerClient(running.grpc_address)
        x = grpcaio.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("alpha", [x])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        await client.close()
        running.in_loop(running.source.set_ready, "alpha", running.routes[0].replicas)
        for answer in await asyncio.gather(*held):
            assert answer.status == 200
            answer.release()
        await session.close()
        assert (
            running.metric("shoal_router_hold_seconds_count", model="alpha", outcome="overflow")
            == 2
        )


async def post_and_wait_until_held(running: RouterThread, session: aiohttp.ClientSession):
    url = f"{running.http_url}/v2/models/alpha/infer"
    held = asyncio.ensure_future(session.post(url, data=BODY))
    await asyncio.to_thread(
        wait_for, lambda: running.source.demand.get("alpha") == (1, 0), 10, "held"
    )
    return held


async def test_a_model_that_cannot_load_fails_held_requests_at_once_without_retry_after(
    triton_a,
) -> None:
    with _held_router(triton_a) as running:
        async with aiohttp.ClientSession() as session:
            held = await post_and_wait_until_held(running, session)
            running.in_loop(
                running.source.set_permanent_error, "alpha", "needs 80 GiB, pools have 24"
            )
            answer = await held
            assert answer.status == 500
            assert "Retry-After" not in answer.headers
            assert "needs 80 GiB" in (await answer.json())["error"]


async def test_a_client_that_disconnects_while_held_is_dropped_and_counted(triton_a) -> None:
    with _held_router(triton_a) as running:
        async with aiohttp.ClientSession() as session:
            held = await post_and_wait_until_held(running, session)
            held.cancel()  # closes the connection
        await asyncio.to_thread(
            wait_for, lambda: running.source.demand.get("alpha") == (0, 0), 10, "dropped"
        )
        assert (
            running.metric("shoal_router_hold_seconds_count", model="alpha", outcome="cancelled")
            == 1
        )


def test_unknown_model_on_a_replica_holds_the_request_until_placement_changes(
    triton_a, triton_b
) -> None:
    a, b = replica_of(triton_a), replica_of(triton_b)
    with RouterThread([StaticRoute("beta", (a, b), max_hold_s=30)]) as running:
        running.in_loop(running.source.set_ready, "beta", [a])  # stale: beta is on b
        client = grpcclient.InferenceServerClient(running.grpc_address)
        x = grpcclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        answers: list = []
        client.async_infer(
            "beta", [x], callback=lambda result, error: answers.append((result, error))
        )
        wait_for(lambda: running.source.demand.get("beta") == (1, 0), 10, "held again")
        assert running.source.placement_requests == ["beta"]
        running.in_loop(running.source.set_ready, "beta", [b])
        result, error = wait_for(lambda: answers and answers[0], 10, "answer")
        assert error is None and result.as_numpy("Y").tolist() == [[2.0, 2.0]]
        assert (
            running.metric("shoal_router_retries_total", model="beta", reason="model_missing") == 1
        )


def test_a_stream_request_for_a_cold_model_is_held_then_answered(triton_a) -> None:
    with _held_router(triton_a) as running:
        client = grpcclient.InferenceServerClient(running.grpc_address)
        answers: list = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        x = grpcclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        client.async_stream_infer("alpha", [x])
        wait_for(lambda: running.source.demand.get("alpha") == (1, 0), 10, "held")
        running.in_loop(running.source.set_ready, "alpha", running.routes[0].replicas)
        result, error = wait_for(lambda: answers and answers[0], 10, "the streamed answer")
        client.stop_stream()
        assert error is None and result.as_numpy("Y").tolist() == [[2.0, 2.0]]
