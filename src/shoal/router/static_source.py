"""A `PlacementSource` with fixed routes: each model is served by a known list of replicas, and a
replica counts as ready for a model when its own `GET /v2/models/<model>/ready` says so (probed
every `probe_interval_s`, and at once when the router asks for the model). It loads nothing.

Useful to put the router in front of Tritons that someone else manages (`shoal router run
--route ...` or `--repository ... --replica ...`), and in tests, where `set_ready` and
`set_permanent_error` change placement by hand (with probing off).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shoal.fleet.replica import Replica
from shoal.manifest import Manifest
from shoal.router.placement_view import DEFAULT_MAX_HOLD_S, ModelRoute

log = logging.getLogger(__name__)

STATIC_POOL = "static"


@dataclass(frozen=True)
class StaticRoute:
    model: str
    replicas: tuple[Replica, ...]
    manifest: Manifest | None = None
    pool: str = STATIC_POOL
    max_hold_s: float = DEFAULT_MAX_HOLD_S


def routes_from_repository(
    repository: Path, replicas: Sequence[Replica], max_hold_s: float = DEFAULT_MAX_HOLD_S
) -> list[StaticRoute]:
    """One route per shoal entry of `repository` (with its manifest), served by `replicas`."""
    from shoal.model_repository.repository import list_entries

    return [
        StaticRoute(entry.name, tuple(replicas), entry.manifest, max_hold_s=max_hold_s)
        for entry in list_entries(repository)
    ]


class StaticPlacement:
    def __init__(
        self,
        routes: Iterable[StaticRoute],
        probe_interval_s: float | None = 2.0,
        probe_timeout_s: float = 1.0,
    ) -> None:
        self._routes = {route.model: route for route in routes}
        self._ready: dict[str, tuple[Replica, ...]] = dict.fromkeys(self._routes, ())
        self._errors: dict[str, str] = {}
        self._changed = asyncio.Event()
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.demand: dict[str, tuple[int, int]] = {}  # last report per model: (held, in flight)
        self.placement_requests: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- PlacementSource --------------------------------------------------------------------------
    def route(self, model: str) -> ModelRoute | None:
        static = self._routes.get(model)
        if static is None:
            return None
        return ModelRoute(
            name=model,
            pool=static.pool,
            ready=self._ready[model],
            max_hold_s=static.max_hold_s,
            permanent_error=self._errors.get(model),
            manifest=static.manifest,
        )

    def models(self) -> Sequence[str]:
        return list(self._routes)

    async def request_placement(self, model: str) -> None:
        """Nothing to load here: look at the replicas again, at once."""
        self.placement_requests.append(model)
        if self._session is not None:
            self._spawn(self.probe([model]))

    def report_demand(self, model: str, held: int, in_flight: int) -> None:
        self.demand[model] = (held, in_flight)

    def changed(self) -> asyncio.Event:
        return self._changed

    # -- changing placement -----------------------------------------------------------------------
    def set_ready(self, model: str, replicas: Iterable[Replica]) -> None:
        wanted = set(replicas)
        ready = tuple(r for r in self._routes[model].replicas if r in wanted)
        if ready != self._ready[model]:
            self._ready[model] = ready
            self._signal()

    def set_permanent_error(self, model: str, message: str | None) -> None:
        if message is None:
            self._errors.pop(model, None)
        else:
            self._errors[model] = message
        self._signal()

    def _signal(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- probing ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start probing (when `probe_interval_s` is set); the first probe is done on return."""
        if self.probe_interval_s is None or self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s)
        )
        await self.probe()
        self._spawn(self._probe_forever())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, models: Iterable[str] | None = None) -> None:
        models = list(self._routes if models is None else models)
        answers = await asyncio.gather(
            *(
                self._ready_on(replica, model)
                for model in models
                for replica in self._routes[model].replicas
            )
        )
        answers_iter = iter(answers)
        for model in models:
            replicas = self._routes[model].replicas
            self.set_ready(model, [r for r in replicas if next(answers_iter)])

    async def _ready_on(self, replica: Replica, model: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{replica.http_url}/v2/models/{model}/ready") as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("probe %s on %s: %s", model, replica.name, exc)
            return False

    async def _probe_forever(self) -> None:
        assert self.probe_interval_s is not None
        while True:
            await asyncio.sleep(self.probe_interval_s)
            await self.probe()

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
