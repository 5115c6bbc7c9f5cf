"""KEDA's external scaler protocol, served by the router: how a pool at zero replicas wakes up.

KEDA calls it through the pool's ScaledObject trigger (`external-push`, built by
shoal.operator.resources): `StreamIsActive` pushes "active" as soon as a request is held for a
model of the pool (KEDA then scales the Deployment from 0 to 1), `GetMetricSpec`/`GetMetrics` give
the HPA the pool's demand (held + in-flight requests at the router) against a target per replica.

Which pool: the trigger's metadata `pool`, else the ScaledObject's name (the operator names it
after the pool). One router serves one namespace: a ScaledObject of another namespace has no
demand here.

Several router replicas: KEDA talks to one of them (through the router Service). That one answers
for all: its own counts plus each peer's, asked with the same protocol and the metadata
`shoal.dev/scope: local` (a peer then answers for itself alone, so nothing recurses). Activity is
pushed by the peers too (one StreamIsActive per peer while KEDA's stream is open), so activation
stays event-driven across routers. Peers are the other addresses of the router Service (watched,
shoal.router.kube_placement) or a fixed list.

The router's data plane provides the counts (`DemandSource`) and an event set on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol

import grpc

from shoal.router.externalscaler import externalscaler_pb2 as pb
from shoal.router.externalscaler import externalscaler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

POOL_KEY = "pool"  # trigger metadata: the pool (default: the ScaledObject's name)
TARGET_KEY = "targetSize"  # trigger metadata: demand per replica the HPA aims at
SCOPE_KEY = "shoal.dev/scope"  # a router asking a peer for the peer's own counts
SCOPE_LOCAL = "local"
DEFAULT_TARGET = 4.0
PEER_TIMEOUT_S = 2.0
PEER_RECONNECT_S = 1.0
PEER_TASK_PREFIX = "peer activity "  # names the tasks that follow a peer's activity


class DemandSource(Protocol):
    """What the router's data plane counts (shoal.router's Router)."""

    def demand_by_pool(self) -> Mapping[str, tuple[int, int]]:
        """{pool: (held, in_flight)} over every model of the pool."""
        ...

    def demand_changed(self) -> asyncio.Event:
        """Set on every change of the counts, then replaced by a fresh one."""
        ...


Peers = Callable[[], Sequence[str]]  # gRPC targets (host:port) of the other routers' scalers


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    def __init__(
        self, demand: DemandSource, namespace: str | None = None, peers: Peers | None = None
    ) -> None:
        self.demand = demand
        self.namespace = namespace
        self.peers: Peers = peers or (lambda: ())
        self._channels: dict[str, grpc.aio.Channel] = {}

    # -- reading a ScaledObjectRef --------------------------------------------------------------
    def _pool(self, ref: pb.ScaledObjectRef) -> str | None:
        if self.namespace is not None and ref.namespace and ref.namespace != self.namespace:
            log.warning(
                "ScaledObject %s/%s asks this router, which serves namespace %s: no demand",
                ref.namespace, ref.name, self.namespace,
            )  # fmt: skip
            return None
        return ref.scalerMetadata.get(POOL_KEY) or ref.name

    @staticmethod
    def _local_only(ref: pb.ScaledObjectRef) -> bool:
        return ref.scalerMetadata.get(SCOPE_KEY) == SCOPE_LOCAL

    def own_demand(self, pool: str | None) -> int:
        if pool is None:
            return 0
        held, in_flight = self.demand.demand_by_pool().get(pool, (0, 0))
        return held + in_flight

    # -- the protocol ---------------------------------------------------------------------------
    async def IsActive(self, request, context) -> pb.IsActiveResponse:  # noqa: N802, ANN001
        return pb.IsActiveResponse(result=await self._total(request) > 0)

    async def StreamIsActive(  # noqa: N802
        self,
        request: pb.ScaledObjectRef,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.IsActiveResponse]:
        async for active in self._activity(request):
            yield pb.IsActiveResponse(result=active)

    async def GetMetricSpec(self, request, context) -> pb.GetMetricSpecResponse:  # noqa: N802, ANN001
        pool = self._pool(request) or request.name
        raw = request.scalerMetadata.get(TARGET_KEY)
        try:
            target = float(raw) if raw else DEFAULT_TARGET
            if not target > 0:
                raise ValueError
        except ValueError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"trigger metadata {TARGET_KEY}={raw!r} of ScaledObject "
                f"{request.namespace}/{request.name} is not a positive number (requests per "
                "replica, e.g. 4)",
            )
        spec = pb.MetricSpec(
            metricName=metric_name(pool), targetSize=math.ceil(target), targetSizeFloat=target
        )
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request, context) -> pb.GetMetricsResponse:  # noqa: N802, ANN001
        ref = request.scaledObjectRef
        total = await self._total(ref)
        name = request.metricName or metric_name(self._pool(ref) or ref.name)
        value = pb.MetricValue(metricName=name, metricValue=total, metricValueFloat=float(total))
        return pb.GetMetricsResponse(metricValues=[value])

    # -- summing over routers -------------------------------------------------------------------
    async def _total(self, ref: pb.ScaledObjectRef) -> int:
        pool = self._pool(ref)
        own = self.own_demand(pool)
        if pool is None or self._local_only(ref):
            return own
        counts = await asyncio.gather(*(self._peer_demand(t, ref) for t in self.peers()))
        return own + sum(counts)

    async def _peer_demand(self, target: str, ref: pb.ScaledObjectRef) -> int:
        request = pb.GetMetricsRequest(scaledObjectRef=_local_ref(ref))
        try:
            answer = await self._stub(target).GetMetrics(request, timeout=PEER_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("router %s did not report its demand: %s", target, exc.details())
            return 0
        return sum(v.metricValue for v in answer.metricValues)

    async def _activity(self, ref: pb.ScaledObjectRef) -> AsyncIterator[bool]:
        """Whether the pool has demand anywhere: now, then at every change."""
        pool = self._pool(ref)
        wake = asyncio.Event()
        peer_active: dict[str, bool] = {}
        watchers: dict[str, asyncio.Task[None]] = {}

        def sync_peers() -> None:
            if pool is None or self._local_only(ref):
                return
            targets = set(self.peers())
            for gone in set(watchers) - targets:
                watchers.pop(gone).cancel()
                peer_active.pop(gone, None)
            for target in targets - set(watchers):
                watchers[target] = asyncio.create_task(
                    self._watch_peer(target, ref, peer_active, wake),
                    name=f"{PEER_TASK_PREFIX}{target}",
                )

        last: bool | None = None
        try:
            while True:
                changed = self.demand.demand_changed()
                sync_peers()
                active = self.own_demand(pool) > 0 or any(peer_active.values())
                if active != last:
                    last = active
                    yield active
                waits = [asyncio.create_task(changed.wait()), asyncio.create_task(wake.wait())]
                try:
                    # Peers join and leave without a demand change: look again now and then.
                    await asyncio.wait(waits, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in waits:
                        task.cancel()
                wake.clear()
        finally:
            for task in watchers.values():
                task.cancel()

    async def _watch_peer(
        self,
        target: str,
        ref: pb.ScaledObjectRef,
        peer_active: dict[str, bool],
        wake: asyncio.Event,
    ) -> None:
        while True:
            try:
                async for answer in self._stub(target).StreamIsActive(_local_ref(ref)):
                    peer_active[target] = answer.result
                    wake.set()
            except grpc.aio.AioRpcError as exc:
                log.debug("activity stream of router %s ended: %s", target, exc.details())
            if peer_active.pop(target, False):
                wake.set()  # an unreachable peer holds nothing we can count on
            await asyncio.sleep(PEER_RECONNECT_S)

    def _stub(self, target: str) -> pb_grpc.ExternalScalerStub:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target)
        return pb_grpc.ExternalScalerStub(channel)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def metric_name(pool: str) -> str:
    """The metric KEDA registers with the HPA (KEDA prefixes it with the trigger index)."""
    return f"shoal-router-demand-{pool}"


def _local_ref(ref: pb.ScaledObjectRef) -> pb.ScaledObjectRef:
    metadata = {**ref.scalerMetadata, SCOPE_KEY: SCOPE_LOCAL}
    return pb.ScaledObjectRef(name=ref.name, namespace=ref.namespace, scalerMetadata=metadata)


class KedaScalerServer:
    """The scaler on its own gRPC port (KEDA's `scalerAddress` names it)."""

    def __init__(
        self,
        demand: DemandSource,
        *,
        port: int,
        host: str = "0.0.0.0",
        namespace: str | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.scaler = ExternalScaler(demand, namespace, peers)
        self._address = f"{host}:{port}"
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0)."""
        # gRPC binds with SO_REUSEPORT by default: a second scaler would share the port silently.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_ExternalScalerServicer_to_server(self.scaler, server)
        try:
            self.port = server.add_insecure_port(self._address)
        except RuntimeError as exc:
            await server.stop(None)
            raise OSError(
                f"cannot listen on {self._address} for KEDA's scaler ({exc}): is the port in "
                "use? Choose another with --scaler-port"
            ) from None
        await server.start()
        self._server = server
        return self.port

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            # Open StreamIsActive calls never end by themselves: the grace period ends them.
            await self._server.stop(grace_s)
            self._server = None
        with contextlib.suppress(Exception):
            await self.scaler.close()
