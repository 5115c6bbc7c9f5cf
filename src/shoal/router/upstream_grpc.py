"""Sending one gRPC call (or opening one stream) to one replica with serialized bytes, failures
sorted for the core as upstream_http does: UNAVAILABLE (refused, reset, or Triton shutting
down) -> ReplicaUnreachable; NOT_FOUND (unknown model) -> ModelMissingOnReplica; any other status
is Triton's answer and passes through (UpstreamRpcError)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from shoal.fleet.replica import Replica
from shoal.router.errors import ModelMissingOnReplica, ReplicaUnreachable

Metadata = Sequence[tuple[str, str | bytes]]


class UpstreamRpcError(Exception):
    """A status the replica answered with, passed to the client unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GrpcUpstream:
    """One channel per replica; method callables without serializers (bytes in, bytes out)."""

    def __init__(self, max_message_bytes: int) -> None:
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    def _channel(self, replica: Replica) -> grpc.aio.Channel:
        target = replica.grpc_target
        if target is None:
            raise ReplicaUnreachable(f"replica {replica.name} has no gRPC port")
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target, self._options)
        return channel

    async def unary(
        self, replica: Replica, method: str, request: bytes, metadata: Metadata, timeout_s: float
    ) -> bytes:
        key = (replica.name, method)
        call = self._unary.get(key)
        if call is None:
            call = self._unary[key] = self._channel(replica).unary_unary(method)
        try:
            return await call(request, metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self.sorted_error(replica, exc) from exc

    def stream(
        self, replica: Replica, method: str, metadata: Metadata
    ) -> grpc.aio.StreamStreamCall:
        return self._channel(replica).stream_stream(method)(metadata=metadata)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._unary.clear()

    def sorted_error(self, replica: Replica, exc: grpc.aio.AioRpcError) -> Exception:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelMissingOnReplica(details)
        # UNAVAILABLE is both gRPC's transport failure (refused, reset) and an answer Triton
        # gives (a restricted protocol, shutting down). A channel still connected heard an
        # answer: pass it on; one that is not lost its replica: try another.
        if code == grpc.StatusCode.UNAVAILABLE and not self._connected(replica):
            return ReplicaUnreachable(f"{replica.name}: {details}")
        return UpstreamRpcError(code, details)

    def _connected(self, replica: Replica) -> bool:
        channel = self._channels.get(replica.grpc_target or "")
        state = channel.get_state(try_to_connect=False) if channel is not None else None
        return state is grpc.ChannelConnectivity.READY
