"""Running the router: the core, its HTTP and gRPC front doors and its metrics endpoint in one
process (`RouterServer`), or N such processes sharing the ports with SO_REUSEPORT
(`run_workers`: the kernel spreads connections over them; each worker has its own core, so hold
queues and in-flight counts are per worker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import replace
from wsgiref.simple_server import WSGIServer

import grpc
from aiohttp import web

from shoal.router.core import Router
from shoal.router.grpc_server import GrpcFrontDoor
from shoal.router.http_server import HttpFrontDoor
from shoal.router.placement_view import PlacementSource
from shoal.router.settings import RouterSettings

log = logging.getLogger(__name__)


class RouterServer:
    """`await RouterServer(source, settings).start()`; ports given as 0 are picked by the OS and
    readable after start (`http_port`, `grpc_port`, `metrics_port`)."""

    def __init__(self, source: PlacementSource, settings: RouterSettings) -> None:
        self.settings = settings
        self.router = Router(source, settings)
        self.http = HttpFrontDoor(self.router, settings)
        self.grpc = GrpcFrontDoor(self.router, settings)
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port
        self.metrics_port = settings.metrics_port
        self._metrics_server: WSGIServer | None = None
        self._runner: web.AppRunner | None = None
        self._grpc_server: grpc.aio.Server | None = None

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def start(self) -> RouterServer:
        settings = self.settings
        # handler_cancellation: a client that goes away cancels its handler, so a held request
        # is dropped (and counted) instead of waiting out its deadline for nobody.
        # shutdown_timeout: stopping cancels held requests after 2 s instead of waiting out their
        # hold deadline (60 s by default): Ctrl-C on `shoal serve` must stop it in seconds.
        self._runner = web.AppRunner(
            self.http.app(), handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.host, settings.http_port, reuse_port=True)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        if settings.grpc_port is not None:
            limit = settings.max_grpc_message_bytes
            self._grpc_server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", limit),
                    ("grpc.max_send_message_length", limit),
                    ("grpc.so_reuseport", 1),
                ]
            )
            self._grpc_server.add_generic_rpc_handlers((self.grpc,))
            self.grpc_port = self._grpc_server.add_insecure_port(
                f"{settings.host}:{settings.grpc_port}"
            )
            await self._grpc_server.start()
        if settings.metrics_port is not None:
            self._metrics_server = self.router.metrics.serve(settings.metrics_port, settings.host)
            self.metrics_port = self._metrics_server.server_port
        return self

    async def stop(self) -> None:
        if self._metrics_server is not None:  # frees its port for the next server
            await asyncio.to_thread(self._metrics_server.shutdown)  # waits out its poll
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=1.0)
            await self.grpc.upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.router.close()


async def serve_until_stopped(
    make_source: Callable[[], PlacementSource], settings: RouterSettings
) -> None:
    """One router process: runs until SIGTERM or SIGINT."""
    source = make_source()
    start = getattr(source, "start", None)
    if start is not None:
        await start()
    server = await RouterServer(source, settings).start()
    log.info("router: HTTP on %s:%s, gRPC on %s", settings.host, server.http_port, server.grpc_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        close = getattr(source, "close", None)
        if close is not None:
            await close()


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where asked for (or, with "auto", where installed), else asyncio's own loop."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run_worker(
    make_source: Callable[[], PlacementSource],
    settings: RouterSettings,
    event_loop: str = "asyncio",
) -> None:
    # A stop that arrives while the worker is still starting (before its event loop installs its
    # handlers) ends it cleanly, not with -SIGTERM.
    signal.signal(signal.SIGTERM, _exit_quietly)
    with (
        contextlib.suppress(KeyboardInterrupt, SystemExit),
        asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner,
    ):
        runner.run(serve_until_stopped(make_source, settings))


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def run_workers(
    workers: int,
    make_source: Callable[[], PlacementSource],
    settings: RouterSettings,
    event_loop: str = "asyncio",
) -> int:
    """Start `workers` router processes on the same ports (worker i serves metrics on
    metrics_port + i); returns when they have all stopped, non-zero if one failed."""
    if workers == 1:
        run_worker(make_source, settings, event_loop)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        metrics_port = None if settings.metrics_port is None else settings.metrics_port + index
        process = context.Process(
            target=run_worker,
            args=(make_source, replace(settings, metrics_port=metrics_port), event_loop),
            name=f"shoal-router-{index}",
        )
        process.start()
        processes.append(process)

    def stop_all(_signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for process in processes:
        process.join()
    return max((abs(p.exitcode or 0) for p in processes), default=0)
