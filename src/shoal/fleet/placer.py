"""Placing one entry on several replicas (a pool): which replicas, in which order, through each
replica's driver (shoal.fleet.driver). Used by the operator's InferenceModel handlers.

One `Placer` lives for the operator's run. It keeps one ReplicaDriver per replica (the driver's
lock serializes control calls to that replica) and a lock per entry, so the same entry is never
placed twice at once. A model counts as loaded only when Triton says so: a restarted operator
observes first and repeats nothing that is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from shoal.fleet.driver import DriverEvent, ReplicaDriver, Resident, default_load_deadline
from shoal.fleet.errors import EntryInvalid, LoadFailed, LoadTimedOut, ReplicaUnreachable
from shoal.fleet.hot_swap import models_to_remove
from shoal.fleet.placement import DEFAULT_POLICY, EvictionPolicy, make_policy
from shoal.fleet.replica import Replica
from shoal.fleet.replica_client import ReplicaObservation
from shoal.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)
T = TypeVar("T")

REMOVE_DEADLINE_S = 30.0
# Eviction.for_entry of an eviction no model asked for (a replica brought within its budget).
FOR_BUDGET = "budget"  # a removal gives up on a replica that does not answer within this


@dataclass(frozen=True)
class KnownModel:
    """What the owner knows of an entry (an InferenceModel, kept in a kopf index)."""

    entry: str
    namespace: str
    name: str
    memory_bytes: int | None
    pinned: bool = False
    priority: int = 0
    uid: str | None = None  # to post Events on the InferenceModel
    in_use: int = 0  # held and in-flight requests the router reports
    min_replicas: int = 1  # replicas its owner wants it on

    def resident(self, default_memory: int) -> Resident:
        memory = self.memory_bytes if self.memory_bytes is not None else default_memory
        return Resident(self.entry, memory, self.pinned, self.priority, self.in_use)


def repository_checks(
    repository: Path | None,
) -> tuple[Callable[[str], list[str]] | None, Callable[[str], int | None] | None]:
    """For a pool whose model repository the caller can read: the entry check (`shoal repo
    check`'s, run before every load) and the memory of entries nobody owns (their manifest).
    Without one, neither: loads are not checked and unowned entries count the default."""
    if repository is None:
        return None, None
    from shoal.model_repository.repository import check_entry  # noqa: PLC0415  (protobuf)

    def entry_problems(entry: str) -> list[str]:
        return check_entry(repository, entry).problems

    def manifest_memory(entry: str) -> int | None:
        try:
            return Manifest.read(repository / entry).memory_bytes
        except ManifestError:
            return None  # not a shoal entry (or unreadable): the driver's default

    return entry_problems, manifest_memory


@dataclass
class Eviction:
    replica: str
    entry: str
    for_entry: str


@dataclass
class PlacementResult:
    loaded_on: list[str] = field(default_factory=list)  # replicas with the entry READY
    versions: dict[str, str] = field(default_factory=dict)  # replica -> version it serves
    evictions: list[Eviction] = field(default_factory=list)
    load_errors: dict[str, str] = field(default_factory=dict)  # replica -> Triton's message
    timed_out: dict[str, str] = field(default_factory=dict)  # replica -> LoadTimedOut message
    invalid_entry: str = ""  # the entry check's verdict: never handed to Triton
    unreachable: dict[str, str] = field(default_factory=dict)  # replica -> error
    blocked: str = ""  # why it could not be placed on more replicas
    last_used: datetime | None = None


DriverFactory = Callable[[Replica], ReplicaDriver]


class Placer:
    def __init__(
        self,
        driver_factory: DriverFactory | None = None,
        *,
        policy: EvictionPolicy | None = None,
        on_event: Callable[[DriverEvent], None] | None = None,
        load_deadline: Callable[[int], float] = default_load_deadline,
    ) -> None:
        self.policy = policy or make_policy(DEFAULT_POLICY)
        self._on_event = on_event
        self._load_deadline = load_deadline
        self._driver_factory = driver_factory or self._default_driver
        self._drivers: dict[str, ReplicaDriver] = {}
        self._entry_locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def _default_driver(self, replica: Replica) -> ReplicaDriver:
        return ReplicaDriver(
            replica,
            policy=self.policy,
            on_event=self._on_event,
            load_deadline=self._load_deadline,
        )

    def driver(self, replica: Replica, repository: Path | None = None) -> ReplicaDriver:
        """The replica's driver; a replica that came back at another address gets a new one.
        `repository`: the pool's model repository, where the operator can read it."""
        driver = self._drivers.get(replica.name)
        if driver is None or driver.replica != replica:
            driver = self._drivers[replica.name] = self._driver_factory(replica)
        if repository is not None:
            driver.use_repository(*repository_checks(repository))
        return driver

    # -- reading ------------------------------------------------------------------------------
    async def observe_all(
        self, replicas: Sequence[Replica]
    ) -> tuple[dict[str, ReplicaObservation], dict[str, str]]:
        """Observations of every replica that answers, and errors of those that do not."""
        return await _ask_each(replicas, lambda r: self.driver(r).observe())

    async def ready_models(
        self, replicas: Sequence[Replica]
    ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """The Triton models READY on each replica that answers, with their versions (one index
        call each, without the driver's lock: a look, not a control call), and errors of those
        that do not."""
        return await _ask_each(replicas, lambda r: self.driver(r).client.ready_models())

    def placing(self, namespace: str, entry: str) -> bool:
        """Whether a placement or removal of `entry` is under way (its lock is held)."""
        lock = self._entry_locks.get((namespace, entry))
        return lock is not None and lock.locked()

    # -- placing ------------------------------------------------------------------------------
    async def place(
        self,
        model: KnownModel,
        memory_bytes: int,
        min_replicas: int,
        replicas: Sequence[Replica],
        budget_bytes: int,
        known: Mapping[str, KnownModel],
        allow_evict: bool,
        stopped: Callable[[], bool] | None = None,
        repository: Path | None = None,
        version: int | None = None,
    ) -> PlacementResult:
        """Make `model` loaded on at least `min_replicas` of `replicas` (all of them if fewer).
        New copies serve `version` (the entry's manifest version, where the caller knows it);
        copies READY at another version count as loaded (they serve) until `roll_out`.

        `known` maps entry names on this pool to their owners (memory, pinned, priority, use).
        With `allow_evict` False, load only where the model fits without evicting (the drift
        timer repairs this way, so that an evicted model does not evict back). `stopped` is
        asked once the entry's lock is held: a drift run that waited there behind the model's
        deletion must not load it back. `repository`: the pool's model repository where the
        caller can read it (entry check before loading, memory of models nobody owns)."""
        result = PlacementResult()
        async with self._entry_locks[(model.namespace, model.entry)]:
            if stopped is not None and stopped():
                result.blocked = "stopped (the model is being deleted)"
                return result
            for replica in replicas:
                self.driver(replica, repository)
            seen, result.unreachable = await self.observe_all(replicas)
            result.loaded_on = sorted(n for n, o in seen.items() if o.ready(model.entry))
            result.versions = _versions(model.entry, result.loaded_on, seen)
            result.last_used = _last_used(model.entry, seen.values())
            if not replicas:
                result.blocked = "the pool has no ready replicas (its Service has no endpoints)"
                return result
            wanted = min(min_replicas, len(replicas))
            if len(result.loaded_on) >= wanted:
                return result
            residents = _residents(known, budget_bytes)
            target = Resident(
                model.entry, memory_bytes, model.pinned, model.priority, model.in_use, version
            )
            # Most free memory first: spreads models and evicts least.
            candidates = sorted(
                (r for r in replicas if r.name in seen and r.name not in result.loaded_on),
                key=lambda r: (
                    self.driver(r).used_bytes(seen[r.name], residents) - budget_bytes,
                    r.name,
                ),
            )
            reasons: list[str] = []
            for replica in candidates:
                if len(result.loaded_on) >= wanted:
                    break
                why = await self._place_on(
                    replica, target, budget_bytes, residents, allow_evict, result
                )
                if why is None:
                    result.loaded_on.append(replica.name)
                    if version is not None:
                        result.versions[replica.name] = str(version)
                else:
                    reasons.append(f"{replica.name}: {why}")
            result.loaded_on.sort()
            if len(result.loaded_on) < wanted:
                missing = wanted - len(result.loaded_on)
                result.blocked = f"{missing} more replica(s) wanted; " + (
                    "; ".join(reasons) or "no replica answered"
                )
        return result

    async def roll_out(
        self,
        model: KnownModel,
        memory_bytes: int,
        version: int,
        replicas: Sequence[Replica],
        budget_bytes: int,
        known: Mapping[str, KnownModel],
        drain: Callable[[str, Mapping[str, str]], Awaitable[None]],
        repository: Path | None = None,
    ) -> PlacementResult:
        """Bring every replica of `replicas` that serves `model` at another version to
        `version`, one replica at a time: `drain(replica name, versions served now)` first (the
        caller stops routing there), then the whole entry reloaded. Returns where it is loaded and at which version
        afterwards, with the failures, as `place` does. Nothing else places this entry
        meanwhile (the entry's lock is held throughout)."""
        result = PlacementResult()
        async with self._entry_locks[(model.namespace, model.entry)]:
            for replica in replicas:
                self.driver(replica, repository)
            seen, result.unreachable = await self.observe_all(replicas)
            result.loaded_on = sorted(n for n, o in seen.items() if o.ready(model.entry))
            result.versions = _versions(model.entry, result.loaded_on, seen)
            residents = _residents(known, budget_bytes)
            target = Resident(
                model.entry, memory_bytes, model.pinned, model.priority, model.in_use, version
            )
            stale = [r for r in replicas if r.name in result.loaded_on and not seen[r.name].serves(
                model.entry, version
            )]  # fmt: skip
            for replica in stale:
                await drain(replica.name, dict(result.versions))
                why = await self._place_on(replica, target, budget_bytes, residents, False, result)
                if why is not None:
                    result.blocked = f"version {version} not rolled out on {replica.name}: {why}"
                    break  # the others keep serving the old version; retried later
                result.versions[replica.name] = str(version)
                log.info("%s: version %s rolled out on %s", model.entry, version, replica.name)
            if stale:  # what serves now, each at which version
                seen, result.unreachable = await self.observe_all(replicas)
                result.loaded_on = sorted(n for n, o in seen.items() if o.ready(model.entry))
                result.versions = _versions(model.entry, result.loaded_on, seen)
        return result

    async def _place_on(
        self,
        replica: Replica,
        target: Resident,
        budget_bytes: int,
        residents: Mapping[str, Resident],
        allow_evict: bool,
        result: PlacementResult,
    ) -> str | None:
        """None when loaded; otherwise why not (a sentence)."""
        try:
            outcome = await self.driver(replica).load(
                target, budget_bytes, residents, allow_evict=allow_evict
            )
        except ReplicaUnreachable as exc:
            result.unreachable[replica.name] = str(exc)
            return "did not answer"
        result.evictions.extend(Eviction(replica.name, e, target.entry) for e in outcome.evicted)
        if outcome.loaded:
            return None
        if isinstance(outcome.error, LoadFailed):
            result.load_errors[replica.name] = outcome.error.triton_message
            return f"load failed: {outcome.error.triton_message}"
        if isinstance(outcome.error, LoadTimedOut):
            result.timed_out[replica.name] = str(outcome.error)
        if isinstance(outcome.error, EntryInvalid):
            result.invalid_entry = str(outcome.error)
        return outcome.reason

    # -- removing and enforcing ---------------------------------------------------------------
    async def unload_everywhere(
        self, namespace: str, entry: str, replicas: Sequence[Replica]
    ) -> dict[str, str]:
        """Unload the entry from every replica that has any of its models; errors by replica.
        A replica that does not answer within REMOVE_DEADLINE_S is given up on (reported)."""
        errors: dict[str, str] = {}
        async with self._entry_locks[(namespace, entry)]:
            for replica in replicas:
                try:
                    await asyncio.wait_for(self.driver(replica).remove(entry), REMOVE_DEADLINE_S)
                except ReplicaUnreachable as exc:
                    errors[replica.name] = str(exc)
                except TimeoutError:
                    errors[replica.name] = f"did not answer within {REMOVE_DEADLINE_S:.0f} s"
        return errors

    async def enforce_budget(
        self,
        replicas: Sequence[Replica],
        budget_bytes: int,
        known: Mapping[str, KnownModel],
        repository: Path | None = None,
    ) -> list[Eviction]:
        """Evict by policy on every replica over `budget_bytes` (a lowered memoryPerReplica,
        models loaded behind the operator's back)."""
        residents = _residents(known, budget_bytes)
        evictions: list[Eviction] = []
        for replica in replicas:
            try:
                driver = self.driver(replica, repository)
                evicted = await driver.enforce_budget(budget_bytes, residents)
            except ReplicaUnreachable as exc:
                log.info("budget not enforced on %s: %s", replica.name, exc)
                continue
            evictions.extend(Eviction(replica.name, e, FOR_BUDGET) for e in evicted)
        return evictions

    async def models_per_replica(self, replicas: Sequence[Replica]) -> dict[str, int]:
        seen, _ = await self.observe_all(replicas)
        return {name: len(self.driver_by_name(name).holding(o)) for name, o in seen.items()}

    def driver_by_name(self, name: str) -> ReplicaDriver:
        return self._drivers[name]


async def _ask_each(
    replicas: Sequence[Replica], ask: Callable[[Replica], Awaitable[T]]
) -> tuple[dict[str, T], dict[str, str]]:
    """`ask` every replica at once: answers by replica, and the errors of those that did not
    answer. Each child returns its error instead of raising it: a child still connecting when
    the operator stops would otherwise surface as a failed task at shutdown."""

    async def one(replica: Replica) -> tuple[bool, T | str]:
        try:
            return True, await ask(replica)
        except ReplicaUnreachable as exc:
            return False, str(exc)

    answers: dict[str, T] = {}
    errors: dict[str, str] = {}
    results = await asyncio.gather(*(one(r) for r in replicas))
    for replica, (answered, result) in zip(replicas, results, strict=True):
        if answered:
            answers[replica.name] = result  # type: ignore[assignment]
        else:
            errors[replica.name] = result  # type: ignore[assignment]
    return answers, errors


def _residents(known: Mapping[str, KnownModel], budget_bytes: int) -> dict[str, Resident]:
    # An owner whose memory is not known yet counts as the whole budget: never as free memory.
    return {entry: info.resident(budget_bytes) for entry, info in known.items()}


def triton_models(entry: str) -> list[str]:
    """Every Triton model of an entry."""
    return models_to_remove(entry)


def _versions(
    entry: str, replicas: Sequence[str], seen: Mapping[str, ReplicaObservation]
) -> dict[str, str]:
    """The version each replica's READY ensemble serves ("" where Triton does not say)."""
    return {name: seen[name].versions.get(entry, "") for name in replicas}


def _last_used(entry: str, observations: object) -> datetime | None:
    names = set(triton_models(entry))
    latest = 0
    for observation in observations:  # type: ignore[attr-defined]
        for name in names:
            latest = max(latest, observation.last_inference_ms.get(name, 0))
    return datetime.fromtimestamp(latest / 1000, tz=UTC) if latest else None
