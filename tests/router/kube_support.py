"""Test-side helpers for the router's cluster tests: an async API client on the test cluster,
waits on a placement source's change event, and a TCP relay to the API server that a test can
cut and restore (the API server going away and coming back, for this client only)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, config


async def api_client(kubeconfig, server: str | None = None) -> client.ApiClient:
    """An API client from the test cluster's kubeconfig; `server` overrides its address."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    if server is not None:
        configuration.host = server
    return client.ApiClient(configuration)


async def until(source: Any, condition: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Wait on `source.changed()` (no polling) until `condition()`; the seconds it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await source.changed().wait()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}") from None
    return time.monotonic() - started


class TcpRelay:
    """127.0.0.1:port -> target. `cut()` drops every connection and refuses new ones;
    `restore()` accepts again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()
