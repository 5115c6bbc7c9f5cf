"""A repository served on a local Triton with placement: what `shoal serve` and `shoal quickstart`
run, and what tests and benchmarks use to serve entries.

    async with LocalServing(repository, budget_bytes=2 * 2**30) as serving:
        await serving.controller.start()          # load what fits
        ...                                        # tritonclient on serving.server.http_address
        await serving.run_until(stop_event)        # the control loop, supervising Triton

Reads the entries' manifests (memory for placement), builds the serving view (portable fallback
for entries exported for the onnxruntime backend), starts Triton on loopback, and stops it all in
reverse order. With `router=RouterSettings(...)` the router (shoal.router) listens in front on the
settings' ports and Triton's stay private: a request for an entry that is not loaded is held,
the entry loaded (evicting by policy), and the request answered. The ports clients use (the
router's, or Triton's without it) are checked free before anything starts: one that is taken is a
PortTaken naming it and its holder, with nothing left running. While running it supervises
Triton: a server that dies is started again on the
same ports and gets back what it had loaded; one that dies CRASH_LIMIT times within
CRASH_WINDOW_S ends serving with TritonCrashLoop and the tail of its log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.fleet.driver import default_load_deadline
from shoal.fleet.errors import FleetError, ReplicaUnreachable
from shoal.fleet.placement import EvictionPolicy
from shoal.fleet.replica import Replica
from shoal.manifest import Manifest
from shoal.router.local_placement import LocalPlacement
from shoal.router.settings import RouterSettings
from shoal.runtime.controller import LocalController
from shoal.runtime.fallback import ServingView, serving_view
from shoal.runtime.installation import locate_triton
from shoal.runtime.ports import PortTaken, check_free
from shoal.runtime.triton import LOOPBACK, TritonServer, TritonStartError

if TYPE_CHECKING:
    from shoal.router.server import RouterServer

log = logging.getLogger(__name__)

CRASH_LIMIT = 3
CRASH_WINDOW_S = 60.0


class TritonCrashLoop(RuntimeError):
    """tritonserver keeps dying: serving stops (the message carries its log's tail)."""


class RepositoryProblem(ValueError):
    """The repository cannot be served as it is (the message says what to fix)."""


def read_manifests(repository: Path) -> dict[str, Manifest]:
    """Every entry's manifest; an unreadable one is an error naming the entry and the fix."""
    from shoal.model_repository.repository import RepositoryError, list_entries  # noqa: PLC0415

    try:
        entries = list_entries(Path(repository))
    except RepositoryError as exc:
        raise RepositoryProblem(str(exc)) from exc
    broken = [f"{e.name}: {e.error}" for e in entries if e.manifest is None]
    if broken:
        raise RepositoryProblem(
            "cannot read the manifest of: " + "; ".join(broken) + " (re-export those entries, "
            "or run `shoal repo check` for details)"
        )
    if not entries:
        raise RepositoryProblem(
            f"{repository} has no shoal entries (folders with shoal.json); export one with "
            "`shoal export SOURCE --name NAME --repository DIR`"
        )
    return {e.name: e.manifest for e in entries if e.manifest is not None}


class LocalServing:
    def __init__(
        self,
        repository: Path | str,
        *,
        budget_bytes: int | None = None,
        policy: EvictionPolicy | None = None,
        pinned: frozenset[str] = frozenset(),
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | None = None,
        load_timeout_s: float | None = None,
        router: RouterSettings | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.manifests = read_manifests(self.repository)
        self._budget = budget_bytes
        self._policy = policy
        self._pinned = pinned
        self._ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
        self._log_path = log_path
        self._load_timeout_s = load_timeout_s
        self.view: ServingView | None = None
        self.server: TritonServer | None = None
        self.controller: LocalController | None = None
        # With `router`: the router in front (its settings' ports), Triton's ports stay private.
        self._router_settings = router
        self.placement: LocalPlacement | None = None
        self.router: RouterServer | None = None

    async def __aenter__(self) -> LocalServing:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def public_ports(self) -> dict[str, int]:
        """The ports clients use, by role (http, grpc, metrics): the router's, or Triton's without
        a router; only those given (None or 0: a free port is picked)."""
        settings = self._router_settings
        if settings is not None:
            ports = {
                "http": settings.http_port,
                "grpc": settings.grpc_port,
                "metrics": settings.metrics_port,
            }
        else:
            ports = {role.removesuffix("_port"): port for role, port in self._ports.items()}
        return {role: port for role, port in ports.items() if port}

    def _public_host(self) -> str:
        return self._router_settings.host if self._router_settings else LOOPBACK

    async def start(self) -> None:
        check_free(self._public_host(), self.public_ports())  # before anything starts
        installation = locate_triton()
        try:
            self.view = serving_view(
                self.repository, self.manifests, installation.backend_directory
            )
            self.server = TritonServer(
                self.view.path,
                installation=installation,
                log_path=self._log_path,
                **self._ports,
            )
            # Blocking (waits for ready): off the event loop so signal handlers keep working.
            await asyncio.to_thread(self.server.start)
            self.controller = LocalController(
                self.server.http_url,
                self.manifests,
                log_reader=self.server.readable_log,
                budget_bytes=self._budget,
                policy=self._policy,
                pinned=self._pinned,
                metrics_url=self.server.metrics_url,
                entry_check=self._entry_problems,
                load_deadline=(
                    (lambda memory: self._load_timeout_s)
                    if self._load_timeout_s
                    else default_load_deadline
                ),
            )
            if self._router_settings is not None:
                await self._start_router(self._router_settings)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TritonStartError | OSError | RuntimeError):
                # Another process may have bound a port since the check: say so, not how the
                # bind failed (a Triton log tail, an aiohttp OSError, a gRPC RuntimeError).
                try:
                    check_free(self._public_host(), self.public_ports())
                except PortTaken as taken:
                    raise taken from exc
            raise

    async def _start_router(self, settings: RouterSettings) -> None:
        """The router in front of Triton: a request for an entry that is not loaded is held while
        the controller loads it (evicting by policy), then answered (shoal.router)."""
        from shoal.router.server import RouterServer  # noqa: PLC0415  (aiohttp, grpc: only here)

        assert self.server is not None and self.controller is not None
        server = self.server
        replica = Replica(
            "local", server.bind_address, server.http_port, server.metrics_port, server.grpc_port
        )
        self.placement = LocalPlacement(self.controller, replica)
        self.router = RouterServer(self.placement, settings)  # set first: stop() closes a half start
        await self.router.start()

    def _entry_problems(self, name: str) -> list[str]:
        from shoal.model_repository.repository import check_entry  # noqa: PLC0415

        return check_entry(self.repository, name).problems

    async def run_until(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        """Run the control loop until `stop`, restarting Triton when it dies."""
        assert self.controller is not None and self.server is not None, "start() first"
        crashes: deque[float] = deque()
        while not stop.is_set():
            try:
                await self.controller.run(stop, interval_s)
                return
            except ReplicaUnreachable as exc:
                if self.server.is_running():  # alive but slow to answer: keep going
                    log.warning("Triton did not answer: %s", exc)
                    await asyncio.sleep(interval_s)
                    continue
            while True:  # restart until it stays up, or give up
                self._count_crash(crashes)
                try:
                    await self._restart()
                    break
                except TritonStartError as exc:
                    log.warning("restarting tritonserver failed: %s", str(exc).splitlines()[0])

    def _count_crash(self, crashes: deque[float]) -> None:
        assert self.server is not None
        now = time.monotonic()
        crashes.append(now)
        while crashes and now - crashes[0] > CRASH_WINDOW_S:
            crashes.popleft()
        code = self.server.returncode
        if len(crashes) >= CRASH_LIMIT:
            raise TritonCrashLoop(
                f"tritonserver died {len(crashes)} times within {CRASH_WINDOW_S:.0f} s (last "
                f"exit code {code}); not restarting it again.\n{self.server.log_tail()}"
            )
        log.warning("tritonserver exited (code %s): restarting it", code)

    async def _restart(self) -> None:
        assert self.controller is not None and self.server is not None
        wanted = sorted(self.controller.wanted)
        await asyncio.to_thread(self.server.restart)
        for name in wanted:
            try:
                await self.controller.ensure_loaded(name)
            except FleetError as exc:
                log.warning("%s not loaded again after the restart: %s", name, exc)
        log.info("tritonserver restarted; loaded again: %s", ", ".join(wanted) or "none")

    async def stop(self) -> None:
        if self.router is not None:
            await self.router.stop()
            self.router = None
        if self.placement is not None:
            await self.placement.close()
            self.placement = None
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        if self.view is not None:
            self.view.close()
