"""`shoal serve`'s placement: the fleet's replica driver (shoal.fleet.driver) over the one local
Triton, with the repository's manifests as the owners of its entries.

- `ensure_loaded(name)` (shoal commands, quickstart, the router's local mode): the driver plans,
  evicts by policy, waits until Triton has released the memory, and loads.
- `run()` enforces the budget against models loaded by clients straight through Triton's
  repository API (they are noticed in its index and counted).
- `listeners` hear every load and eviction (the router's local placement source).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from shoal.contract import STEP_ENCODE, step_name
from shoal.fleet.driver import DriverEvent, ReplicaDriver, Resident, default_load_deadline
from shoal.fleet.errors import EntryInvalid, FleetError, PlacementRefused, ReplicaUnreachable
from shoal.fleet.hot_swap import light_steps_ready
from shoal.fleet.placement import (
    DEFAULT_POLICY,
    EvictionPolicy,
    ModelState,
    initial_loads,
    make_policy,
)
from shoal.fleet.replica import Replica
from shoal.fleet.replica_client import ReplicaClient, ReplicaObservation
from shoal.manifest import Manifest

log = logging.getLogger(__name__)

# Kept under these names for callers of `shoal serve`'s API.
EntryBroken = EntryInvalid
__all__ = ["EntryBroken", "LocalController", "PlacementRefused", "UnknownModel"]


class UnknownModel(LookupError):
    """No entry of that name in the served repository."""


@dataclass
class EntryStatus:
    """What the controller last saw of one entry (an ensemble and its three steps)."""

    name: str
    memory_bytes: int
    pinned: bool = False
    ensemble: str | None = None  # Triton state of the ensemble
    encode: str | None = None  # Triton state of <name>__encode: the step that holds the memory
    light_steps_ready: bool = False  # tokenize and postprocess
    reason: str = ""  # Triton's reason for an UNAVAILABLE encode/ensemble
    in_use: int = 0  # held and in-flight requests the router reports

    @property
    def loaded(self) -> bool:
        return self.encode == "READY"

    @property
    def ready(self) -> bool:
        return self.ensemble == "READY" and self.encode == "READY"


Listener = Callable[[str, bool], None]  # (entry, ready now)


class LocalController:
    def __init__(
        self,
        server_url: str,
        manifests: dict[str, Manifest],
        *,
        budget_bytes: int | None = None,
        policy: EvictionPolicy | None = None,
        pinned: set[str] | frozenset[str] = frozenset(),
        metrics_url: str | None = None,
        keep_light_steps: bool = True,
        entry_check: Callable[[str], list[str]] | None = None,
        log_reader: Callable[[], str] | None = None,
        load_deadline: Callable[[int], float] = default_load_deadline,
    ) -> None:
        self.manifests = dict(manifests)
        self.budget_bytes = budget_bytes if budget_bytes is not None else 2**63
        self.entries = {
            name: EntryStatus(name, m.memory_bytes, pinned=name in pinned)
            for name, m in sorted(self.manifests.items())
        }
        unknown_pins = sorted(set(pinned) - set(self.entries))
        if unknown_pins:
            raise UnknownModel(self._unknown_message(unknown_pins[0]))
        self.replica = _local_replica(server_url, metrics_url)
        self.driver = ReplicaDriver(
            self.replica,
            client=ReplicaClient(self.replica, log_reader=log_reader),
            policy=policy or make_policy(DEFAULT_POLICY),
            entry_check=entry_check,
            on_event=self._on_driver_event,
            keep_light_steps=keep_light_steps,
            load_deadline=load_deadline,
        )
        self.listeners: list[Listener] = []
        self.wanted: set[str] = set()  # loaded and not evicted since: loaded again after a restart

    @property
    def policy(self) -> EvictionPolicy:
        return self.driver.policy

    # -- what the driver is told --------------------------------------------------------------
    def residents(self) -> dict[str, Resident]:
        """The repository's entries; anything else a client loads counts as the driver's
        default size (DEFAULT_UNOWNED_MEMORY) and is evictable."""
        return {
            e.name: Resident(e.name, e.memory_bytes, pinned=e.pinned, in_use=e.in_use)
            for e in self.entries.values()
        }

    def report_use(self, name: str, in_use: int) -> None:
        """Held and in-flight requests (the router): the model is not evicted meanwhile."""
        self._require(name)
        self.entries[name].in_use = in_use

    def used_bytes(self) -> int:
        observation = self.driver.last_observation
        return self.driver.used_bytes(observation, self.residents()) if observation else 0

    # -- observing Triton ---------------------------------------------------------------------
    async def refresh(self) -> ReplicaObservation:
        observation = await self.driver.observe()
        self._apply(observation)
        return observation

    def _apply(self, observation: ReplicaObservation) -> None:
        for entry in self.entries.values():
            encode = step_name(entry.name, STEP_ENCODE)
            entry.encode = observation.states.get(encode) or None  # "": never loaded
            entry.ensemble = observation.states.get(entry.name) or None
            entry.light_steps_ready = light_steps_ready(entry.name, observation.states)
            entry.reason = observation.reasons.get(encode) or observation.reasons.get(
                entry.name, ""
            )

    # -- acting -------------------------------------------------------------------------------
    async def start(self, load: list[str] | None = None) -> list[str]:
        """Load `load` (default: every entry that fits the budget and passes the entry check,
        pinned first, then by name). Returns what was loaded."""
        if load is not None:
            for name in load:
                self._require(name)
            chosen = list(dict.fromkeys(load))
        else:
            candidates = []
            for name, entry in self.entries.items():
                problems = await self.driver.entry_problems(name)
                if problems:
                    log.warning("not loading %s: %s", name, EntryInvalid(name, problems))
                    continue
                candidates.append(ModelState(name, entry.memory_bytes, pinned=entry.pinned))
            chosen, skipped = initial_loads(candidates, self.budget_bytes)
            for name, why in skipped.items():
                log.info("not loading %s at start: %s", name, why)
        for name in chosen:
            await self.ensure_loaded(name)
        return chosen

    async def ensure_loaded(self, name: str) -> EntryStatus:
        """Load `name` if it is not ready, evicting by policy first when the budget needs it.
        Raises EntryInvalid, PlacementRefused, or the typed load failure."""
        self._require(name)
        entry = self.entries[name]
        outcome = await self.driver.load(
            Resident(
                name,
                entry.memory_bytes,
                entry.pinned,
                in_use=entry.in_use,
                version=self.manifests[name].version,  # a hot swap stays within this version
            ),
            self.budget_bytes,
            self.residents(),
        )
        await self.refresh()
        if outcome.loaded:
            return entry
        if outcome.error is not None:
            raise outcome.error
        raise PlacementRefused(outcome.reason)

    async def enforce_budget(self) -> list[str]:
        """Evict by policy until loaded models fit the budget (after loads made by clients)."""
        evicted = await self.driver.enforce_budget(self.budget_bytes, self.residents())
        await self.refresh()
        return evicted

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        """Enforce the budget until `stop` is set. A replica that stops answering ends the loop
        with ReplicaUnreachable (the supervisor restarts Triton); other errors are logged."""
        while not stop.is_set():
            try:
                evicted = await self.enforce_budget()
                if evicted:
                    log.info("over budget: evicted %s", ", ".join(evicted))
            except ReplicaUnreachable:
                raise
            except FleetError as exc:
                log.warning("control loop: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    def _on_driver_event(self, event: DriverEvent) -> None:
        if event.kind not in ("loaded", "evicted", "removed"):
            return
        ready = event.kind == "loaded"
        if ready:
            self.wanted.add(event.entry)
        else:
            self.wanted.discard(event.entry)
        entry = self.entries.get(event.entry)
        if entry is not None:
            entry.encode = entry.ensemble = "READY" if ready else "UNAVAILABLE"
        for listener in list(self.listeners):
            listener(event.entry, ready)

    def _require(self, name: str) -> None:
        if name not in self.entries:
            raise UnknownModel(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(self.entries) or "none"
        return f"no model named {name!r} in the served repository (models: {known})"


def _local_replica(server_url: str, metrics_url: str | None) -> Replica:
    url = urlsplit(server_url if "://" in server_url else f"http://{server_url}")
    metrics_port = urlsplit(metrics_url).port if metrics_url else None
    return Replica("local", url.hostname or "127.0.0.1", url.port or 8000, metrics_port)
