"""Sending one HTTP request to one replica, bytes in and bytes out (no tensor is parsed), with
failures sorted for the core: connection refused/reset/closed -> ReplicaUnreachable (retry on
another replica), "unknown model" -> ModelMissingOnReplica (hold again), past the timeout ->
UPSTREAM_TIMEOUT. Any other answer, Triton's errors included, is returned as it came."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.fleet.replica import Replica
from shoal.router.errors import ErrorKind, ModelMissingOnReplica, ReplicaUnreachable, RouterError
from shoal.router.http_connections import BadResponse, ConnectionFailed, ConnectionPool

# Response headers that carry meaning for KServe clients; the rest is the replica's business.
PASSED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Inference-Header-Content-Length")


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpUpstream:
    """Pooled keep-alive connections to every replica (shoal.router.http_connections)."""

    def __init__(self) -> None:
        self._pool = ConnectionPool()

    async def close(self) -> None:
        self._pool.close()

    async def send(
        self,
        replica: Replica,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout_s: float,
        model_scoped: bool = True,
    ) -> UpstreamResponse:
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._request(replica, method, path, headers, body)
        except TimeoutError:
            raise RouterError(
                ErrorKind.UPSTREAM_TIMEOUT,
                f"replica {replica.name} did not answer {path} within {timeout_s:.1f} s",
            ) from None
        except (ConnectionFailed, BadResponse) as exc:
            raise ReplicaUnreachable(f"{replica.name}: {exc}") from exc
        if model_scoped and response.status == 404:
            # Triton: "Request for unknown model: ... is not found / has no available versions".
            raise ModelMissingOnReplica(response.body.decode("utf-8", "replace")[:500])
        passed = {
            name: response.headers[name.lower()]
            for name in PASSED_RESPONSE_HEADERS
            if name.lower() in response.headers
        }
        return UpstreamResponse(response.status, passed, response.body)

    async def _request(
        self, replica: Replica, method: str, path: str, headers: Mapping[str, str], body: bytes
    ):
        request = (replica.host, replica.http_port, method, path, headers, body)
        try:
            return await self._pool.request(*request)
        except ConnectionFailed as exc:
            if not exc.reused or exc.answered:
                raise
        # A kept-alive connection the replica had closed while idle: once more, on a new one.
        return await self._pool.request(*request)
