"""A replica SIGKILLed in the middle of 1,000 concurrent requests (500 over HTTP, 500 over gRPC):
not one is lost. Requests on the dead replica (connection reset) and new ones (refused) go to the
other replica; the static source's readiness probe then drops the dead one."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio

from shoal.router.static_source import StaticRoute
from tests.router.support import RouterThread, replica_of, wait_for

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(600)]

REQUESTS_PER_PROTOCOL = 500


async def test_a_replica_killed_during_1000_concurrent_requests_loses_none(
    triton_server, doubler_repository
) -> None:
    first = triton_server(doubler_repository, load_models=["alpha"])
    second = triton_server(doubler_repository, load_models=["alpha"])
    replicas = (replica_of(first), replica_of(second))
    with RouterThread([StaticRoute("alpha", replicas)], probe_interval_s=0.2) as running:
        assert running.source.route("alpha").ready == replicas
        http = httpaio.InferenceServerClient(running.http_address, conn_limit=200)
        rpc = grpcaio.InferenceServerClient(running.grpc_address)
        done = 0

        async def one(index: int, protocol: str) -> np.ndarray:
            nonlocal done
            values = np.full((1, 4), index, dtype=np.float32)
            module, client = (httpaio, http) if protocol == "http" else (grpcaio, rpc)
            x = module.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(values)
            answer = await client.infer("alpha", [x])
            done += 1
            return answer.as_numpy("Y")

        async def kill_first_when_under_way() -> None:
            await asyncio.to_thread(wait_for, lambda: done >= 150, 120, "150 answers")
            os.kill(first.pid, signal.SIGKILL)

        killer = asyncio.create_task(kill_first_when_under_way())
        calls = [one(i, "http") for i in range(REQUESTS_PER_PROTOCOL)]
        calls += [one(i, "grpc") for i in range(REQUESTS_PER_PROTOCOL)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        await killer
        await http.close()
        await rpc.close()
        failures = [a for a in answers if isinstance(a, BaseException)]
        assert failures == [], f"{len(failures)} lost, e.g. {failures[:3]}"
        for index, answer in enumerate(answers):
            assert answer.tolist() == [[2.0 * (index % REQUESTS_PER_PROTOCOL)] * 4]
        wait_for(lambda: running.source.route("alpha").ready == replicas[1:], 10, "dropped")
        retries = sum(
            running.metric("shoal_router_retries_total", model="alpha", reason=reason)
            for reason in ("unreachable", "replica_left")
        )
        assert retries > 0, "the kill happened after every request was answered"
        print(f"retries after the kill: {retries:.0f}")
