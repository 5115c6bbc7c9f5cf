"""The gRPC front door: `inference.GRPCInferenceService` served by a generic handler that never
deserializes a request (tensors stay bytes); only the model name and version are read
(grpc_wire). Health and server metadata are the router's own; model calls go through the core;
Triton's repository, shared-memory, trace and log APIs answer UNIMPLEMENTED.

ModelStreamInfer: each request on a client stream is sent to a ready replica of its model (held
first if need be) over one upstream stream per replica; answers come back as they arrive. A
stream is not retried: an upstream stream that breaks ends the client's with its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack

import grpc
from tritonclient.grpc import service_pb2

from shoal import __version__ as shoal_version
from shoal.fleet.replica import Replica
from shoal.router.core import Router
from shoal.router.errors import (
    ErrorKind,
    ModelMissingOnReplica,
    ReplicaUnreachable,
    RouterError,
    replica_failure,
)
from shoal.router.grpc_wire import read_model_fields
from shoal.router.http_server import EXTENSIONS
from shoal.router.settings import RouterSettings
from shoal.router.upstream_grpc import GrpcUpstream, Metadata, UpstreamRpcError

SERVICE = "/inference.GRPCInferenceService/"
HELD = ("ModelInfer", "ModelMetadata", "ModelConfig")  # proxied, held while the model is cold
NOT_SERVED = (
    "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    "TraceSetting", "LogSettings",
)  # fmt: skip
DROPPED_METADATA = ("user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding")

Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


async def abort(context: grpc.aio.ServicerContext, exc: RouterError, retry_after_s: int) -> None:
    response = exc.response
    if response.retry_after:
        context.set_trailing_metadata((("retry-after", str(retry_after_s)),))
    await context.abort(response.grpc_code, exc.message)


class GrpcFrontDoor(grpc.GenericRpcHandler):
    def __init__(self, router: Router, settings: RouterSettings) -> None:
        self.router = router
        self.settings = settings
        self.upstream = GrpcUpstream(settings.max_grpc_message_bytes)
        header = settings.restricted_api_header.lower()
        # Triton 2.51 reads a gRPC restricted-protocol header with this prefix (its refusal
        # message names it); drop both spellings.
        self._dropped = {*DROPPED_METADATA, header, f"triton-grpc-protocol-{header}"}
        own: dict[str, Unary] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_live,
            "ServerMetadata": self.server_metadata,
            "ModelReady": self.model_ready,
            "ModelStatistics": self.statistics,
        }
        self._handlers = {
            SERVICE + name: grpc.unary_unary_rpc_method_handler(self._guarded(behavior))
            for name, behavior in own.items()
        }
        for name in HELD:
            self._handlers[SERVICE + name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(self._held(SERVICE + name))
            )
        for name in NOT_SERVED:
            self._handlers[SERVICE + name] = grpc.unary_unary_rpc_method_handler(self.not_served)
        self._handlers[SERVICE + "ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.stream_infer
        )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)

    def _guarded(self, behavior: Unary) -> Unary:
        async def guarded(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await behavior(request, context)
            except RouterError as exc:
                await abort(context, exc, self.settings.retry_after_s)
            except (ReplicaUnreachable, ModelMissingOnReplica) as exc:
                await abort(context, replica_failure(exc), self.settings.retry_after_s)
            except UpstreamRpcError as exc:
                await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable: abort raises")

        return guarded

    def _metadata(self, context: grpc.aio.ServicerContext) -> Metadata:
        return tuple(
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key not in self._dropped and not key.startswith(":")
        )

    # -- the router's own answers -----------------------------------------------------------------
    async def server_live(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return service_pb2.ServerLiveResponse(live=True).SerializeToString()

    async def server_metadata(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        answer = service_pb2.ServerMetadataResponse(
            name="shoal-router", version=shoal_version, extensions=EXTENSIONS
        )
        return answer.SerializeToString()

    async def model_ready(self, request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        model, _ = read_model_fields(request)
        ready = bool(self.router.route(model).ready)
        return service_pb2.ModelReadyResponse(ready=ready).SerializeToString()

    async def not_served(self, _request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        exc = RouterError(
            ErrorKind.NOT_SERVED,
            "Triton's repository, shared-memory, trace and log APIs are not served through the "
            "router (placement belongs to the operator or `shoal serve`)",
        )
        await abort(context, exc, 0)
        raise AssertionError("unreachable: abort raises")

    # -- proxied ----------------------------------------------------------------------------------
    def _held(self, method: str) -> Unary:
        async def held(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            model, _ = read_model_fields(request)
            metadata = self._metadata(context)

            async def attempt(replica: Replica, timeout_s: float) -> bytes:
                return await self.upstream.unary(replica, method, request, metadata, timeout_s)

            return await self.router.call(model, attempt, context.time_remaining())

        return held

    async def statistics(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Statistics never wait for a model; no model named: every known model's, in one list."""
        model, _ = read_model_fields(request) if request else ("", "")
        method = SERVICE + "ModelStatistics"
        metadata = self._metadata(context)
        merged = service_pb2.ModelStatisticsResponse()
        models = [model] if model else list(self.router.source.models())
        for name in models:
            replica = self.router.ready_replica(name)
            if replica is None:
                continue
            one = (
                request
                if model
                else service_pb2.ModelStatisticsRequest(name=name).SerializeToString()
            )
            answer = await self.upstream.unary(
                replica, method, one, metadata, self.settings.upstream_timeout_s
            )
            merged.model_stats.extend(
                service_pb2.ModelStatisticsResponse.FromString(answer).model_stats
            )
        return merged.SerializeToString()

    async def stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        stream = _ProxiedStream(self, context)
        try:
            async for answer in stream.run(requests):
                yield answer
        except RouterError as exc:
            await abort(context, exc, self.settings.retry_after_s)
        except UpstreamRpcError as exc:
            await context.abort(exc.code, exc.details)


_DONE, _OPENED, _CLOSED = object(), object(), object()  # markers on the answers queue


class _ProxiedStream:
    """One client stream fanned out to one upstream stream per replica it needs."""

    def __init__(self, door: GrpcFrontDoor, context: grpc.aio.ServicerContext) -> None:
        self.door = door
        self.context = context
        self.answers: asyncio.Queue[object] = asyncio.Queue()
        self.calls: dict[str, grpc.aio.StreamStreamCall] = {}
        self.pumps: list[asyncio.Task] = []

    async def run(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        with ExitStack() as leases:
            feeder = asyncio.create_task(self._feed(requests, leases))
            try:
                open_pumps, fed = 0, False
                while not fed or open_pumps:
                    item = await self.answers.get()
                    if item is _DONE:
                        fed = True
                    elif item is _OPENED:
                        open_pumps += 1
                    elif item is _CLOSED:
                        open_pumps -= 1
                    elif isinstance(item, Exception):
                        raise item
                    else:
                        yield item  # type: ignore[misc]
            finally:
                feeder.cancel()
                for call in self.calls.values():
                    call.cancel()
                await asyncio.gather(feeder, *self.pumps, return_exceptions=True)

    async def _feed(self, requests: AsyncIterator[bytes], leases: ExitStack) -> None:
        router, method = self.door.router, SERVICE + "ModelStreamInfer"
        try:
            async for request in requests:
                model, _ = read_model_fields(request)
                replica = await router.hold_until_ready(model, self.context.time_remaining())
                call = self.calls.get(replica.name)
                if call is None:
                    call = self.door.upstream.stream(
                        replica, method, self.door._metadata(self.context)
                    )
                    self.calls[replica.name] = call
                    leases.enter_context(router.in_flight(model, replica))
                    self.answers.put_nowait(_OPENED)
                    self.pumps.append(asyncio.create_task(self._pump(call)))
                await call.write(request)
            for call in self.calls.values():
                await call.done_writing()
        except (RouterError, UpstreamRpcError) as exc:
            self.answers.put_nowait(exc)
        except grpc.aio.AioRpcError as exc:
            self.answers.put_nowait(_as_stream_error(exc))
        self.answers.put_nowait(_DONE)

    async def _pump(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for answer in call:
                self.answers.put_nowait(answer)
        except grpc.aio.AioRpcError as exc:
            self.answers.put_nowait(_as_stream_error(exc))
        self.answers.put_nowait(_CLOSED)


def _as_stream_error(exc: grpc.aio.AioRpcError) -> UpstreamRpcError:
    return UpstreamRpcError(exc.code(), exc.details() or "")
