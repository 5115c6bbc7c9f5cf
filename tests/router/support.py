"""Running a router for tests: in a background thread with its own event loop, so sync
tritonclient calls, aio clients and the test's own loop all work against it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from shoal.fleet.replica import Replica
from shoal.model_repository.layout import EntryLayout
from shoal.router.server import RouterServer
from shoal.router.settings import RouterSettings
from shoal.router.static_source import StaticPlacement, StaticRoute, routes_from_repository

TEST_SETTINGS = RouterSettings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=None)


def replica_of(server: Any, name: str | None = None) -> Replica:
    """The Replica for a tests.support.triton server."""
    return Replica(
        name or f"127.0.0.1:{server.http_port}",
        "127.0.0.1",
        server.http_port,
        metrics_port=server.metrics_port,
        grpc_port=server.grpc_port,
    )


class RouterThread:
    """`with RouterThread(routes, **settings) as running:`; `running.source` is the
    StaticPlacement, changed from the test through `running.in_loop(...)`."""

    def __init__(
        self,
        routes: Iterable[StaticRoute],
        probe_interval_s: float | None = None,
        **settings: Any,
    ) -> None:
        self.routes = list(routes)
        self.probe_interval_s = probe_interval_s
        self.settings = replace(TEST_SETTINGS, **settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.source: StaticPlacement
        self.server: RouterServer

    def __enter__(self) -> RouterThread:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        self.source = StaticPlacement(self.routes, probe_interval_s=self.probe_interval_s)
        await self.source.start()
        self.server = await RouterServer(self.source, self.settings).start()

    async def _stop(self) -> None:
        await self.server.stop()
        await self.source.close()

    def run(self, coroutine: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def in_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        async def call() -> Any:
            return function(*args)

        return self.run(call())

    @property
    def router(self):
        return self.server.router

    @property
    def http_address(self) -> str:
        return self.server.http_address

    @property
    def http_url(self) -> str:
        return f"http://{self.server.http_address}"

    @property
    def grpc_address(self) -> str:
        return self.server.grpc_address

    def metric(self, name: str, **labels: str) -> float:
        value = self.router.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll `condition` until truthy (tests only: the router itself never polls)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.002)


def serve_entries(repository: Any, names: Iterable[str], tmp_path_factory: Any) -> Iterator:
    """A Triton serving entries `names` of `repository` (every Triton model of each), for a
    module's fixture: `yield from serve_entries(...)`."""
    from tests.router.conftest import _session_triton  # the conftest imports this module

    models = [m for name in names for m in EntryLayout(repository, name).triton_models]
    yield from _session_triton(repository, models, tmp_path_factory)


@contextmanager
def router_over_repository(
    repository: Any, servers: Iterable[Any], names: Iterable[str] | None = None
) -> Iterator[RouterThread]:
    """A router over every entry of `repository` on `servers` (each one replica), as `shoal
    router run --repository DIR --replica URL` builds its routes; `names`: the replicas' names
    (default: their addresses)."""
    servers = list(servers)
    names = list(names) if names is not None else [None] * len(servers)
    replicas = [replica_of(server, name) for server, name in zip(servers, names, strict=True)]
    with RouterThread(
        routes_from_repository(repository, replicas), probe_interval_s=0.5
    ) as running:
        yield running
