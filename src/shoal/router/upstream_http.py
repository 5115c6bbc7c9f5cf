"""Sending one HTTP request to one replica, bytes in and bytes out (no tensor is parsed), with
failures sorted for the core: connection refused/reset/closed -> ReplicaUnreachable (retry on
another replica), "unknown model" -> ModelMissingOnReplica (hold again), past the timeout ->
UPSTREAM_TIMEOUT. Any other answer, Triton's errors included, is returned as it came."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from shoal.fleet.replica import Replica
from shoal.router.errors import ErrorKind, ModelMissingOnReplica, ReplicaUnreachable, RouterError

# Response headers that carry meaning for KServe clients; the rest is the replica's business.
PASSED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Inference-Header-Content-Length")


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpUpstream:
    """One pooled aiohttp session for every replica (keep-alive connections, no limit)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            # auto_decompress off: a compressed answer goes back to the client as it came.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        assert self._session is not None, "HttpUpstream.start() first"
        try:
            async with self._session.request(
                method,
                replica.http_url + path,
                data=body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
            ) as response:
                payload = await response.read()
        except TimeoutError:
            raise RouterError(
                ErrorKind.UPSTREAM_TIMEOUT,
                f"replica {replica.name} did not answer {path} within {timeout_s:.1f} s",
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ReplicaUnreachable(f"{replica.name}: {type(exc).__name__}: {exc}") from exc
        if model_scoped and response.status == 404:
            # Triton: "Request for unknown model: ... is not found / has no available versions".
            raise ModelMissingOnReplica(payload.decode("utf-8", "replace")[:500])
        passed = {h: response.headers[h] for h in PASSED_RESPONSE_HEADERS if h in response.headers}
        return UpstreamResponse(response.status, passed, payload)
