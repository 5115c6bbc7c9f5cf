"""The router's domain core: affinity, holding requests through cold starts, retries, and the
demand it reports. It knows nothing of HTTP or gRPC: the front doors (http_server, grpc_server)
hand it an `attempt` (send this request to that replica) and it decides where and when.

Per request: look the model up (unknown -> error naming the known ones); if no replica has it
ready, hold it in the model's bounded queue, ask the source once to place it, and wait on the
source's change event (no polling) until a replica is ready, the deadline passes, or the source
says the model can never load. Then send it to the ready replica with the fewest requests in
flight. A replica that refuses or resets the connection, or leaves the ready set while the request
is under way, gets the request retried elsewhere (at most `max_retries` more tries, inside the
deadline); a replica that answers "unknown model" means placement is stale: hold again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from shoal.fleet.replica import Replica
from shoal.router.balancing import check_model_name, choose_replica, unknown_model_message
from shoal.router.errors import ErrorKind, ModelMissingOnReplica, ReplicaUnreachable, RouterError
from shoal.router.metrics import RouterMetrics
from shoal.router.placement_view import ModelRoute, PlacementSource
from shoal.router.settings import RouterSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
# Send the request to this replica, within this many seconds. Raises ReplicaUnreachable or
# ModelMissingOnReplica; any other answer (Triton's own errors included) is the result.
Attempt = Callable[[Replica, float], Awaitable[T]]


@dataclass
class ModelDemand:
    pool: str
    held: int = 0
    in_flight: int = 0


class _ReplicaLeft(Exception):
    """The replica left the model's ready set while the request was under way."""


@dataclass(eq=False)
class _Flight:
    """One attempt under way, so the placement watcher can cancel it if its replica leaves."""

    replica: Replica
    task: asyncio.Task | None
    left: bool = False


@dataclass
class _Request:
    model: str
    hold_until: float  # loop time: holding and retrying stop here
    client_until: float | None  # loop time the client gives up, when it said so
    excluded: set[str]  # replicas this request could not reach
    retries: int = 0
    last_problem: str = ""  # what the last replica said, for the deadline message


class Router:
    def __init__(self, source: PlacementSource, settings: RouterSettings) -> None:
        self.source = source
        self.settings = settings
        self.metrics = RouterMetrics()
        self._in_flight_by_replica: Counter[str] = Counter()
        self._demand: dict[str, ModelDemand] = {}
        self._demand_event = asyncio.Event()
        self._placement_asked: set[str] = set()
        self._flights: dict[str, set[_Flight]] = {}
        self._turn = 0
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_placement(), name="router-placement")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None

    # -- what the front doors and the KEDA scaler read ----------------------------------------
    def route(self, model: str) -> ModelRoute:
        check_model_name(model)
        route = self.source.route(model)
        if route is None:
            raise RouterError(
                ErrorKind.MODEL_NOT_FOUND,
                unknown_model_message(model, self.source.models()),
                param="model",
            )
        return route

    def ready_replica(self, model: str) -> Replica | None:
        """Where a request that must not wait (statistics) would go now; None: nowhere ready."""
        return choose_replica(self.route(model).ready, self._in_flight_by_replica)

    def demand_by_pool(self) -> dict[str, tuple[int, int]]:
        """{pool: (held, in_flight)} over every model this router has seen asked for."""
        totals: dict[str, tuple[int, int]] = {}
        for demand in self._demand.values():
            held, in_flight = totals.get(demand.pool, (0, 0))
            totals[demand.pool] = (held + demand.held, in_flight + demand.in_flight)
        return totals

    def demand_changed(self) -> asyncio.Event:
        """Set on every change of held or in-flight counts, then replaced by a fresh event."""
        return self._demand_event

    # -- one request ----------------------------------------------------------------------------
    async def call(
        self, model: str, attempt: Attempt[T], client_timeout_s: float | None = None
    ) -> T:
        route = self.route(model)
        request = self._new_request(route, client_timeout_s)
        replica = await self._pick(request, wait_for_change=False)
        while True:
            timeout_s = self._attempt_timeout(request)
            try:
                return await self._attempt(model, replica, attempt, timeout_s)
            except (ReplicaUnreachable, _ReplicaLeft) as exc:
                reason = "unreachable" if isinstance(exc, ReplicaUnreachable) else "replica_left"
                self._count_retry(request, replica, reason, exc)
                replica = await self._pick(request, wait_for_change=False)
            except ModelMissingOnReplica as exc:
                # Placement said ready, the replica says unknown: ask again and wait for a change.
                self.metrics.retries.labels(model, "model_missing").inc()
                request.last_problem = f"replica {replica.name} answered: {exc}"
                self._placement_asked.discard(model)
                replica = await self._pick(request, wait_for_change=True)

    async def hold_until_ready(self, model: str, client_timeout_s: float | None) -> Replica:
        """For streams: a ready replica for `model`, holding as `call` does (no retries)."""
        request = self._new_request(self.route(model), client_timeout_s)
        return await self._pick(request, wait_for_change=False)

    @contextmanager
    def in_flight(self, model: str, replica: Replica):
        """Counts a request (or an open stream) as in flight on `replica`."""
        self._in_flight_by_replica[replica.name] += 1
        self._change_demand(model, in_flight=1)
        try:
            yield
        finally:
            self._in_flight_by_replica[replica.name] -= 1
            if self._in_flight_by_replica[replica.name] <= 0:
                del self._in_flight_by_replica[replica.name]
            self._change_demand(model, in_flight=-1)

    # -- internals ------------------------------------------------------------------------------
    def _new_request(self, route: ModelRoute, client_timeout_s: float | None) -> _Request:
        now = asyncio.get_running_loop().time()
        if client_timeout_s is not None:
            return _Request(route.name, now + client_timeout_s, now + client_timeout_s, set())
        return _Request(route.name, now + route.max_hold_s, None, set())

    def _attempt_timeout(self, request: _Request) -> float:
        if request.client_until is None:
            return self.settings.upstream_timeout_s
        remaining = request.client_until - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise RouterError(
                ErrorKind.UPSTREAM_TIMEOUT,
                f"model {request.model!r}: the request's deadline passed before a replica answered",
            )
        return remaining

    def _count_retry(
        self, request: _Request, replica: Replica, reason: str, exc: Exception
    ) -> None:
        request.excluded.add(replica.name)
        request.retries += 1
        self.metrics.retries.labels(request.model, reason).inc()
        log.info("model %s: replica %s %s (%s); retrying", request.model, replica.name, reason, exc)
        too_late = asyncio.get_running_loop().time() >= request.hold_until
        if request.retries > self.settings.max_retries or too_late:
            raise RouterError(
                ErrorKind.REPLICA_UNREACHABLE,
                f"model {request.model!r}: {request.retries} replicas failed in turn (last: "
                f"{replica.name}, {reason}: {exc or 'left the ready set'}); retry after "
                f"{self.settings.retry_after_s} s",
            )

    async def _pick(self, request: _Request, wait_for_change: bool) -> Replica:
        while True:
            if not wait_for_change:
                route = self.route(request.model)
                replica = choose_replica(
                    route.ready, self._in_flight_by_replica, request.excluded, self._turn
                )
                self._turn += 1
                if replica is not None:
                    return replica
            await self._hold(request, wait_for_change)
            wait_for_change = False

    async def _attempt(
        self, model: str, replica: Replica, attempt: Attempt[T], timeout_s: float
    ) -> T:
        loop = asyncio.get_running_loop()
        flight = _Flight(replica, asyncio.current_task())
        flights = self._flights.setdefault(model, set())
        flights.add(flight)
        started = loop.time()
        try:
            with self.in_flight(model, replica):
                return await attempt(replica, timeout_s)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Cancelled by the placement watcher alone (not by the client too): retry elsewhere.
            if flight.left and task is not None and task.uncancel() == 0:
                raise _ReplicaLeft() from None
            raise
        finally:
            flights.discard(flight)
            self.metrics.model(model).upstream_seconds.observe(loop.time() - started)

    async def _hold(self, request: _Request, wait_for_change: bool) -> None:
        model = request.model
        demand = self._demand_for(model)
        if demand.held >= self.settings.max_held_per_model:
            self.metrics.hold_seconds.labels(model, "overflow").observe(0)
            raise RouterError(
                ErrorKind.HOLD_OVERFLOW,
                f"model {model!r} is not ready and {demand.held} requests are already held for "
                f"it (the limit); retry after {self.settings.retry_after_s} s",
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "failed"
        self._change_demand(model, held=1)
        try:
            await self._ask_placement(model)
            await self._wait_until_ready(request, wait_for_change)
            outcome = "dispatched"
            self._placement_asked.discard(model)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except RouterError as exc:
            outcome = "deadline" if exc.kind is ErrorKind.HOLD_DEADLINE else "failed"
            raise
        finally:
            self._change_demand(model, held=-1)
            self.metrics.hold_seconds.labels(model, outcome).observe(loop.time() - started)

    async def _wait_until_ready(self, request: _Request, wait_for_change: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            changed = self.source.changed()  # taken before looking, so no change is missed
            route = self.route(request.model)
            if route.permanent_error:
                raise RouterError(
                    ErrorKind.MODEL_CANNOT_LOAD,
                    f"model {request.model!r} cannot be served: {route.permanent_error}",
                )
            ready = [r for r in route.ready if r.name not in request.excluded]
            if ready and not wait_for_change:
                return
            wait_for_change = False
            remaining = request.hold_until - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                raise RouterError(
                    ErrorKind.HOLD_DEADLINE, self._deadline_message(route, request)
                ) from None

    def _deadline_message(self, route: ModelRoute, request: _Request) -> str:
        if request.last_problem:
            why = request.last_problem
        elif route.ready:
            why = "its replicas could not be reached"
        else:
            why = "no replica has it loaded yet (it was asked to be placed)"

        return (
            f"model {route.name!r} was not ready before the request's deadline: {why}; "
            f"retry after {self.settings.retry_after_s} s"
        )

    async def _ask_placement(self, model: str) -> None:
        if model in self._placement_asked:
            return
        self._placement_asked.add(model)
        self.metrics.placement_requests.labels(model).inc()
        try:
            await self.source.request_placement(model)
        except Exception as exc:  # the source's failure must not fail the held request
            log.warning("asking to place %s failed: %s", model, exc)
            self._placement_asked.discard(model)

    def _demand_for(self, model: str) -> ModelDemand:
        demand = self._demand.get(model)
        if demand is None:
            route = self.source.route(model)
            demand = self._demand[model] = ModelDemand(pool=route.pool if route else "")
        return demand

    def _change_demand(self, model: str, held: int = 0, in_flight: int = 0) -> None:
        demand = self._demand_for(model)
        demand.held += held
        demand.in_flight += in_flight
        if held:
            self.metrics.model(model).held.set(demand.held)
        if in_flight:
            self.metrics.model(model).in_flight.set(demand.in_flight)
        self.source.report_demand(model, demand.held, demand.in_flight)
        event, self._demand_event = self._demand_event, asyncio.Event()
        event.set()

    async def _watch_placement(self) -> None:
        """Cancel attempts whose replica left their model's ready set, so they retry elsewhere."""
        while True:
            await self.source.changed().wait()
            for model, flights in list(self._flights.items()):
                route = self.source.route(model)
                ready = {r.name for r in route.ready} if route is not None else set()
                for flight in list(flights):
                    if flight.replica.name not in ready and not flight.left and flight.task:
                        flight.left = True
                        flight.task.cancel()
