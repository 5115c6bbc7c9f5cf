"""`shoal serve`'s local mode on a real Triton with two tiny embedders and a budget for one: a
request through the router for the evicted entry is held, the entry loaded (evicting the other),
and the request answered, over HTTP and gRPC, with no client retry. The first answer is timed
against Triton's own reload of the same entry in the same run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio

from shoal.manifest import Manifest
from shoal.router.settings import RouterSettings
from shoal.runtime.serve import LocalServing
from shoal.runtime.triton import free_port
from tests.runtime.entries import export_tiny_embedders

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

NAMES = ["ma", "mb"]
SETTINGS = RouterSettings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=None)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("local-serve") / "repository"
    export_tiny_embedders(tiny_model("bert"), path, NAMES)
    return path


def budget_for_one(repository) -> int:
    return int(max(Manifest.read(repository / n).memory_bytes for n in NAMES) * 1.5)


async def embed_http(address: str, model: str, text: str) -> np.ndarray:
    client = httpaio.InferenceServerClient(address)
    try:
        tensor = httpaio.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        return (await client.infer(model, [tensor])).as_numpy("EMBEDDING")
    finally:
        await client.close()


async def embed_grpc(address: str, model: str, text: str) -> np.ndarray:
    client = grpcaio.InferenceServerClient(address)
    try:
        tensor = grpcaio.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        return (await client.infer(model, [tensor])).as_numpy("EMBEDDING")
    finally:
        await client.close()


async def test_a_request_for_an_evicted_entry_is_held_loaded_and_answered(repository):
    async with LocalServing(
        repository, budget_bytes=budget_for_one(repository), router=SETTINGS
    ) as serving:
        router, triton, controller = serving.router, serving.server, serving.controller
        assert {router.http_port, router.grpc_port}.isdisjoint({triton.http_port, triton.grpc_port})
        assert await controller.start(load=["ma"]) == ["ma"]
        direct_ma = await embed_http(triton.http_address, "ma", "a shoal of fish")
        await controller.ensure_loaded("mb")  # evicts ma (its light steps stay: hot swap)
        direct_mb = await embed_http(triton.http_address, "mb", "a shoal of fish")

        # Triton's own reload of an evicted entry (evicting the other), as serve does it, timed.
        # (the first inference on a fresh load is Triton's too: the cold answer includes it).
        started = time.monotonic()
        await controller.ensure_loaded("ma")
        reload_s = time.monotonic() - started
        await embed_http(triton.http_address, "ma", "a shoal of fish")
        direct_cold_s = time.monotonic() - started
        assert not controller.entries["mb"].ready

        # mb is evicted: through the router the request is held, mb loaded, the request answered.
        started = time.monotonic()
        through_router = await embed_http(router.http_address, "mb", "a shoal of fish")
        first_answer_s = time.monotonic() - started
        np.testing.assert_allclose(through_router, direct_mb, atol=1e-6)
        assert controller.entries["mb"].ready and not controller.entries["ma"].ready
        print(
            f"cold entry: through the router {first_answer_s * 1000:.0f} ms to the first answer; "
            f"direct: reload {reload_s * 1000:.0f} ms, reload + first answer "
            f"{direct_cold_s * 1000:.0f} ms"
        )
        # Goal +50 ms, measured by benchmarks/router_cold_start.py; here a loose bound (shared CPU).
        assert first_answer_s <= direct_cold_s + 1.0

        # And over gRPC, for ma (evicted in turn).
        np.testing.assert_allclose(
            await embed_grpc(router.grpc_address, "ma", "a shoal of fish"), direct_ma, atol=1e-6
        )
        assert controller.entries["ma"].ready and not controller.entries["mb"].ready


async def test_an_entry_that_can_never_load_fails_at_once_naming_the_fix(repository):
    # The budget is below one entry: nothing can be evicted to make room.
    async with LocalServing(
        repository, budget_bytes=budget_for_one(repository) // 3, router=SETTINGS
    ) as serving:
        started = time.monotonic()
        with pytest.raises(Exception, match="--memory-budget") as error:
            await embed_http(serving.router.http_address, "ma", "x")
        assert time.monotonic() - started < 10  # not the 60 s hold deadline
        assert "'ma'" in str(error.value)
        with pytest.raises(Exception, match="known models: ma, mb"):
            await embed_http(serving.router.http_address, "nope", "x")


async def test_a_held_request_survives_triton_dying_mid_load(repository):
    """Triton SIGKILLed while the request's entry loads: serve restarts it, the source tries the
    load again while the request is still held, and the request is answered."""
    async with LocalServing(
        repository, budget_bytes=budget_for_one(repository), router=SETTINGS
    ) as serving:
        router, triton, controller = serving.router, serving.server, serving.controller
        await controller.start(load=["ma"])
        stop = asyncio.Event()
        supervisor = asyncio.create_task(serving.run_until(stop, interval_s=0.2))
        try:
            first_pid = triton.pid
            request = asyncio.create_task(embed_http(router.http_address, "mb", "hello"))
            async with asyncio.timeout(30):
                while router.router.demand_by_pool().get("local", (0, 0))[0] < 1:
                    await router.router.demand_changed().wait()
            os.kill(first_pid, signal.SIGKILL)  # the load of mb is under way (or about to be)
            answer = await asyncio.wait_for(request, 120)
            assert answer.shape[-1] == 32
            assert triton.pid != first_pid and controller.entries["mb"].ready
        finally:
            stop.set()
            await asyncio.wait_for(supervisor, 60)


async def test_stopping_with_a_request_held_takes_seconds_not_its_hold_deadline(repository):
    serving = LocalServing(repository, budget_bytes=budget_for_one(repository), router=SETTINGS)
    await serving.start()
    try:
        await serving.controller.start(load=["ma"])
        serving.controller.report_use("ma", 1)  # ma in use: mb cannot load, its request waits
        request = asyncio.create_task(embed_http(serving.router.http_address, "mb", "x"))
        router = serving.router.router
        async with asyncio.timeout(30):
            while router.demand_by_pool().get("local", (0, 0))[0] < 1:
                await router.demand_changed().wait()
    finally:
        started = time.monotonic()
        await serving.stop()
        stopped_after = time.monotonic() - started
    assert stopped_after < 20, f"stop took {stopped_after:.1f} s"  # the hold deadline is 60 s
    with pytest.raises(Exception):  # noqa: B017  (the connection is closed under it)
        await request


def test_serve_without_the_router_puts_triton_on_the_given_port(repository, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "serve", str(repository), "--no-router",
         "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0", "--load", "ma",
         "--log-file", str(tmp_path / "triton.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        banner = ""
        while "Ctrl-C" not in banner:
            line = process.stdout.readline()
            assert line, banner
            banner += line
        assert f"Triton on HTTP http://127.0.0.1:{port}" in banner
        assert "router on HTTP" not in banner
        # Triton's own repository API answers there (it is not reachable through a router).
        index = httpx.post(f"http://127.0.0.1:{port}/v2/repository/index", json={}, timeout=10)
        assert {m["name"] for m in index.json() if m.get("state") == "READY"} >= {"ma"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
