"""A repository served on a local Triton with placement: what `shoal serve` and `shoal quickstart`
run, and what tests and benchmarks use to serve entries.

    async with LocalServing(repository, budget_bytes=2 * 2**30) as serving:
        await serving.controller.start()          # load what fits
        ...                                        # tritonclient on serving.server.http_address
        await serving.run_until(stop_event)        # the control loop

Reads the entries' manifests (memory for placement), builds the serving view (portable fallback
for entries exported for the onnxruntime backend), starts Triton on loopback, and stops it all in
reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shoal.manifest import Manifest
from shoal.fleet.placement import EvictionPolicy
from shoal.runtime.controller import LocalController
from shoal.runtime.fallback import ServingView, serving_view
from shoal.runtime.installation import locate_triton
from shoal.runtime.triton import TritonServer
from shoal.fleet.triton_control import TritonControl

log = logging.getLogger(__name__)


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
    ) -> None:
        self.repository = Path(repository).resolve()
        self.manifests = read_manifests(self.repository)
        self._budget = budget_bytes
        self._policy = policy
        self._pinned = pinned
        self._ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
        self._log_path = log_path
        self.view: ServingView | None = None
        self.server: TritonServer | None = None
        self.control: TritonControl | None = None
        self.controller: LocalController | None = None

    async def __aenter__(self) -> LocalServing:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
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
            self.control = TritonControl(self.server.http_url, log_reader=self.server.log_text)
            self.controller = LocalController(
                self.control,
                self.manifests,
                budget_bytes=self._budget,
                policy=self._policy,
                pinned=self._pinned,
                metrics_url=self.server.metrics_url,
                entry_check=self._entry_problems,
            )
        except BaseException:
            await self.stop()
            raise

    def _entry_problems(self, name: str) -> list[str]:
        from shoal.model_repository.repository import check_entry  # noqa: PLC0415

        return check_entry(self.repository, name).problems

    async def run_until(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        assert self.controller is not None, "start() first"
        await self.controller.run(stop, interval_s)

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        if self.view is not None:
            self.view.close()
