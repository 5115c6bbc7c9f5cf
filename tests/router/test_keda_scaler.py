"""KEDA's external scaler protocol, spoken by a real gRPC client (as KEDA would) against the
router's scaler: activity pushed within a second of the first held request, metric spec and
value, bad trigger metadata refused, and demand summed over several routers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from shoal.router.externalscaler import externalscaler_pb2 as pb
from shoal.router.externalscaler import externalscaler_pb2_grpc as pb_grpc
from shoal.router.keda_scaler import PEER_TASK_PREFIX, KedaScalerServer, metric_name

pytestmark = pytest.mark.timeout(60)


class Counts:
    """The counts a router's data plane keeps, set by the test (the scaler's input)."""

    def __init__(self) -> None:
        self.pools: dict[str, tuple[int, int]] = {}
        self._changed = asyncio.Event()

    def set(self, pool: str, held: int, in_flight: int) -> None:
        self.pools[pool] = (held, in_flight)
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def demand_by_pool(self) -> dict[str, tuple[int, int]]:
        return dict(self.pools)

    def demand_changed(self) -> asyncio.Event:
        return self._changed


async def started(counts: Counts, **kwargs) -> tuple[KedaScalerServer, str]:
    server = KedaScalerServer(counts, port=0, host="127.0.0.1", **kwargs)
    port = await server.start()
    return server, f"127.0.0.1:{port}"


def ref(name: str = "gpu-a", namespace: str = "team-a", **metadata: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name=name, namespace=namespace, scalerMetadata=metadata)


async def next_answer(stream: AsyncIterator[pb.IsActiveResponse]) -> bool:
    return (await asyncio.wait_for(stream.__anext__(), 5)).result


async def test_first_held_request_is_pushed_active_within_a_second():
    counts = Counts()
    server, target = await started(counts, namespace="team-a")
    async with grpc.aio.insecure_channel(target) as channel:
        scaler = pb_grpc.ExternalScalerStub(channel)
        assert (await scaler.IsActive(ref())).result is False
        stream = scaler.StreamIsActive(ref()).__aiter__()
        assert await next_answer(stream) is False  # the current state first
        started_at = time.monotonic()
        counts.set("gpu-a", held=1, in_flight=0)
        assert await next_answer(stream) is True
        pushed_after = time.monotonic() - started_at
        assert pushed_after <= 1.0, f"activity pushed after {pushed_after:.3f} s"
        print(f"held -> StreamIsActive true in {pushed_after * 1000:.1f} ms")
        counts.set("gpu-a", held=3, in_flight=2)  # still active: nothing new is pushed
        counts.set("gpu-a", held=0, in_flight=0)
        assert await next_answer(stream) is False
        assert (await scaler.IsActive(ref())).result is False
        counts.set("gpu-b", held=1, in_flight=0)  # another pool's demand is not this one's
        assert (await scaler.IsActive(ref())).result is False
    await server.stop()


async def test_metric_spec_and_value_name_the_pool_and_count_held_and_in_flight():
    counts = Counts()
    counts.set("gpu-a", held=2, in_flight=5)
    server, target = await started(counts)
    async with grpc.aio.insecure_channel(target) as channel:
        scaler = pb_grpc.ExternalScalerStub(channel)
        spec = await scaler.GetMetricSpec(ref(targetSize="2.5"))
        (metric,) = spec.metricSpecs
        assert metric.metricName == metric_name("gpu-a") == "shoal-router-demand-gpu-a"
        assert (metric.targetSizeFloat, metric.targetSize) == (2.5, 3)
        assert (await scaler.GetMetricSpec(ref())).metricSpecs[0].targetSizeFloat == 4.0
        values = await scaler.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="s0-shoal-router-demand-gpu-a")
        )
        (value,) = values.metricValues
        assert (value.metricName, value.metricValue, value.metricValueFloat) == (
            "s0-shoal-router-demand-gpu-a",
            7,
            7.0,
        )
        # The pool may be named in the trigger's metadata instead of by the ScaledObject's name.
        named = await scaler.IsActive(ref(name="scaler-of-a", pool="gpu-a"))
        assert named.result is True
    await server.stop()


async def test_bad_target_and_other_namespaces_get_clear_answers():
    counts = Counts()
    counts.set("gpu-a", held=1, in_flight=0)
    server, target = await started(counts, namespace="team-a")
    async with grpc.aio.insecure_channel(target) as channel:
        scaler = pb_grpc.ExternalScalerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await scaler.GetMetricSpec(ref(targetSize="lots"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "targetSize='lots'" in error.value.details()
        assert "team-a/gpu-a" in error.value.details()
        assert (await scaler.IsActive(ref(namespace="team-b"))).result is False
    await server.stop()


async def test_demand_is_summed_over_router_replicas_and_pushed_from_a_peer():
    mine, theirs = Counts(), Counts()
    peer, peer_target = await started(theirs)
    unreachable = "127.0.0.1:1"  # a router that went away: counted as no demand
    server, target = await started(mine, peers=lambda: [peer_target, unreachable])
    async with grpc.aio.insecure_channel(target) as channel:
        scaler = pb_grpc.ExternalScalerStub(channel)
        stream = scaler.StreamIsActive(ref()).__aiter__()
        assert await next_answer(stream) is False
        started_at = time.monotonic()
        theirs.set("gpu-a", held=1, in_flight=0)  # the request is held at the other router
        assert await next_answer(stream) is True
        assert time.monotonic() - started_at <= 1.0
        mine.set("gpu-a", held=0, in_flight=4)
        request = pb.GetMetricsRequest(scaledObjectRef=ref())
        assert (await scaler.GetMetrics(request)).metricValues[0].metricValue == 5
        theirs.set("gpu-a", held=0, in_flight=0)
        mine.set("gpu-a", held=0, in_flight=0)
        assert await next_answer(stream) is False
    # A peer asked for its own counts answers for itself alone.
    async with grpc.aio.insecure_channel(peer_target) as channel:
        theirs.set("gpu-a", held=2, in_flight=0)
        local = pb.GetMetricsRequest(scaledObjectRef=ref(**{"shoal.dev/scope": "local"}))
        answer = await pb_grpc.ExternalScalerStub(channel).GetMetrics(local)
        assert answer.metricValues[0].metricValue == 2
    await server.stop()
    await peer.stop()


async def test_a_busy_port_is_an_error_naming_the_flag():
    counts = Counts()
    server, target = await started(counts)
    port = int(target.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="--scaler-port"):
        await KedaScalerServer(counts, port=port, host="127.0.0.1").start()
    await server.stop()


async def test_a_peer_that_hangs_or_answers_garbage_costs_at_most_the_peer_timeout():
    async def hang(reader, writer):  # accepts, never answers
        await reader.read()

    async def garbage(reader, writer):  # not gRPC at all
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    hanging = await asyncio.start_server(hang, "127.0.0.1", 0)
    junk = await asyncio.start_server(garbage, "127.0.0.1", 0)
    targets = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in (hanging, junk)]
    mine = Counts()
    mine.set("gpu-a", held=2, in_flight=0)
    server, target = await started(mine, peers=lambda: targets)
    async with grpc.aio.insecure_channel(target) as channel:
        scaler = pb_grpc.ExternalScalerStub(channel)
        started_at = time.monotonic()
        answer = await scaler.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref()))
        assert answer.metricValues[0].metricValue == 2  # its own, the peers counted as none
        assert time.monotonic() - started_at < 5
        stream = scaler.StreamIsActive(ref()).__aiter__()
        assert await next_answer(stream) is True  # own demand, whatever the peers do
    await server.stop()
    hanging.close()
    junk.close()


async def test_a_keda_stream_that_goes_away_leaves_no_peer_streams_behind():
    mine, theirs = Counts(), Counts()
    peer, peer_target = await started(theirs)
    server, target = await started(mine, peers=lambda: [peer_target])

    def following_peers() -> list[asyncio.Task]:
        return [
            t
            for t in asyncio.all_tasks()
            if t.get_name().startswith(PEER_TASK_PREFIX) and not t.done()
        ]

    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.ExternalScalerStub(channel).StreamIsActive(ref())
        assert (await asyncio.wait_for(call.read(), 5)).result is False
        assert len(following_peers()) == 1
        call.cancel()  # KEDA restarted, or its connection dropped
    async with asyncio.timeout(5):
        while following_peers():
            await asyncio.sleep(0.05)
    await server.stop()
    await peer.stop()
