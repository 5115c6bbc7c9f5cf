"""Placing one model on a pool's replicas: observe, decide with shoal.fleet.placement, evict, load.

Called by the InferenceModel handlers and the drift timer (handlers.py). One `Placer` lives for
the operator's run (in kopf's memo). It guarantees:
- control calls to one replica are serialized (an asyncio lock per replica), and each decision
  is taken inside that lock from a fresh look at the replica, so two models never race for the
  same free memory;
- the same model is never loaded twice at once (a lock per model);
- a model counts as loaded only when Triton says so: a restarted operator reads the replicas
  first and repeats nothing that is done.

Hot swap (shoal.fleet.hot_swap, shared with `shoal serve`): evicting unloads only a model's encode step
(the memory), its light python steps stay loaded, and loading it back loads only the encode step;
deleting a model unloads all four of its Triton models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shoal.fleet.hot_swap import (
    entry_of,
    holds_memory,
    light_steps_ready,
    models_to_evict,
    models_to_load,
    models_to_remove,
    present,
)
from shoal.model_repository.layout import EntryLayout
from shoal.operator import metrics
from shoal.fleet.replica import Replica
from shoal.fleet.replica_client import (
    LoadFailed,
    ReplicaObservation,
    ReplicaUnreachable,
    TritonReplicaClient,
)
from shoal.fleet.placement import LeastRecentlyUsed, ModelState, format_size, plan_load

log = logging.getLogger(__name__)

UNLOAD_WAIT_S = 60.0  # how long an evicted model may take to release its memory
UNLOAD_POLL_S = 0.1

__all__ = ["KnownModel", "Placer", "PlacementResult", "entry_of", "triton_models"]


def triton_models(entry: str) -> list[str]:
    """Every Triton model of an entry, steps first, ensemble last."""
    return EntryLayout(Path("."), entry).triton_models


@dataclass(frozen=True)
class KnownModel:
    """What the operator knows of a model from its InferenceModel (kept in a kopf index)."""

    entry: str
    namespace: str
    name: str
    memory_bytes: int | None
    pinned: bool = False
    priority: int = 0
    uid: str | None = None  # to post Events on the InferenceModel
    # Requests held or in flight at a router keep the model from eviction until then (epoch
    # seconds; shoal.operator.demand_handlers reads it from the model's annotation).
    router_in_use_until: float = 0.0

    @property
    def router_in_use(self) -> int:
        return 1 if self.router_in_use_until > time.time() else 0


@dataclass
class Eviction:
    replica: str
    entry: str
    for_entry: str


@dataclass
class PlacementResult:
    loaded_on: list[str] = field(default_factory=list)  # replicas with the entry READY
    evictions: list[Eviction] = field(default_factory=list)
    load_errors: dict[str, str] = field(default_factory=dict)  # replica -> Triton's message
    unreachable: dict[str, str] = field(default_factory=dict)  # replica -> error
    blocked: str = ""  # why it could not be placed on more replicas
    last_used: datetime | None = None


ClientFactory = Callable[[Replica], TritonReplicaClient]


class Placer:
    def __init__(self, client_factory: ClientFactory = TritonReplicaClient) -> None:
        self._client_factory = client_factory
        self._replica_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._model_locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._loading: set[tuple[str, str]] = set()  # (replica, entry) being loaded right now
        self.policy = LeastRecentlyUsed()

    # -- reading ------------------------------------------------------------------------------
    async def observe_all(
        self, replicas: Sequence[Replica]
    ) -> tuple[dict[str, ReplicaObservation], dict[str, str]]:
        """Observations of every replica that answers, and errors of those that do not."""
        # Each child returns its error instead of raising it: a child still connecting when the
        # operator stops would otherwise surface as a failed task at shutdown.
        results = await asyncio.gather(*(self._observe_or_error(r) for r in replicas))
        seen: dict[str, ReplicaObservation] = {}
        errors: dict[str, str] = {}
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, ReplicaObservation):
                seen[replica.name] = result
            else:
                errors[replica.name] = result
        return seen, errors

    async def _observe_or_error(self, replica: Replica) -> ReplicaObservation | str:
        try:
            return await self._client_factory(replica).observe()
        except ReplicaUnreachable as exc:
            return str(exc)

    # -- placing ------------------------------------------------------------------------------
    async def place(
        self,
        model: KnownModel,
        memory_bytes: int,
        min_replicas: int,
        replicas: Sequence[Replica],
        budget_bytes: int,
        known: dict[str, KnownModel],
        allow_evict: bool,
        stopped: Callable[[], bool] | None = None,
    ) -> PlacementResult:
        """Make `model` loaded on at least `min_replicas` of `replicas` (all of them if fewer).

        `known` maps entry names on this pool to what their InferenceModels say (memory, pinned,
        priority). With `allow_evict` False, load only where the model fits without evicting
        (the drift timer repairs this way, so that an evicted model does not evict back).
        `stopped` is asked once the model's lock is held: a drift run that waited there behind
        the model's deletion must not load it back (nothing would ever unload it again)."""
        result = PlacementResult()
        async with self._model_locks[(model.namespace, model.entry)]:
            if stopped is not None and stopped():
                result.blocked = "stopped (the model is being deleted)"
                return result
            seen, result.unreachable = await self.observe_all(replicas)
            ensemble = model.entry
            result.loaded_on = sorted(n for n, o in seen.items() if o.ready(ensemble))
            result.last_used = _last_used(model.entry, seen.values())
            if not replicas:
                result.blocked = "the pool has no ready replicas (its Service has no endpoints)"
                return result
            wanted = min(min_replicas, len(replicas))
            if len(result.loaded_on) >= wanted:
                return result
            # Most free memory first: spreads models and evicts least.
            candidates = sorted(
                (r for r in replicas if r.name in seen and r.name not in result.loaded_on),
                key=lambda r: (-self._free_bytes(seen[r.name], budget_bytes, known), r.name),
            )
            reasons: list[str] = []
            for replica in candidates:
                if len(result.loaded_on) >= wanted:
                    break
                outcome = await self._place_on(
                    replica, model, memory_bytes, budget_bytes, known, allow_evict, result
                )
                if outcome is True:
                    result.loaded_on.append(replica.name)
                elif outcome:
                    reasons.append(f"{replica.name}: {outcome}")
            result.loaded_on.sort()
            if len(result.loaded_on) < wanted:
                missing = wanted - len(result.loaded_on)
                result.blocked = f"{missing} more replica(s) wanted; " + (
                    "; ".join(reasons) or "no replica answered"
                )
        return result

    def _free_bytes(
        self, observation: ReplicaObservation, budget: int, known: dict[str, KnownModel]
    ) -> int:
        used = sum(
            (known[e].memory_bytes or 0) for e in _entries_holding_memory(observation) if e in known
        )
        return budget - used

    async def _place_on(
        self,
        replica: Replica,
        model: KnownModel,
        memory_bytes: int,
        budget_bytes: int,
        known: dict[str, KnownModel],
        allow_evict: bool,
        result: PlacementResult,
    ) -> bool | str:
        """True when loaded; otherwise why not (a sentence)."""
        client = self._client_factory(replica)
        async with self._replica_locks[replica.name]:
            try:
                observation = await client.observe()  # fresh, inside the lock
            except ReplicaUnreachable as exc:
                result.unreachable[replica.name] = str(exc)
                return "did not answer"
            if observation.ready(model.entry):
                return True
            states = self._model_states(replica, observation, known, model.priority)
            target = ModelState(model.entry, memory_bytes, pinned=model.pinned)
            plan = plan_load(target, states, budget_bytes, self.policy)
            if not plan.admit:
                return plan.reason
            if plan.evict and not allow_evict:
                return (
                    f"needs {format_size(memory_bytes)}; fits only by evicting "
                    f"{', '.join(plan.evict)} (the drift timer does not evict)"
                )
            try:
                for victim in plan.evict:
                    await self._unload_models(client, models_to_evict(victim), observation)
                    metrics.EVICTIONS.labels(replica=replica.name).inc()
                    result.evictions.append(Eviction(replica.name, victim, model.entry))
                    log.info("evicted %s from %s for %s", victim, replica.name, model.entry)
                if plan.evict:
                    still_held = await self._wait_until_released(client, plan.evict)
                    if still_held:
                        return (
                            f"evicted {', '.join(still_held)} but Triton still holds their "
                            f"memory after {UNLOAD_WAIT_S:.0f} s (requests in flight); retrying"
                        )
                    observation = await client.observe()
                await self._load_entry(client, model.entry, observation)
            except LoadFailed as exc:
                result.load_errors[replica.name] = exc.triton_message
                return f"load failed: {exc.triton_message}"
            except ReplicaUnreachable as exc:
                result.unreachable[replica.name] = str(exc)
                return "did not answer"
            return True

    def _model_states(
        self,
        replica: Replica,
        observation: ReplicaObservation,
        known: dict[str, KnownModel],
        incoming_priority: int,
    ) -> list[ModelState]:
        states = []
        for entry in _entries_holding_memory(observation):
            info = known.get(entry)
            names = [m for m in observation.states if entry_of(m) == entry]
            loading = (replica.name, entry) in self._loading or any(
                observation.states.get(m) == "LOADING" for m in names
            )
            in_flight = sum(observation.pending_requests.get(m, 0) for m in names)
            in_flight += info.router_in_use if info else 0
            last_used = max((observation.last_inference_ms.get(m, 0) for m in names), default=0)
            if info is None:
                log.warning(
                    "%s on %s has no InferenceModel: not counted, never evicted",
                    entry,
                    replica.name,
                )
            states.append(
                ModelState(
                    name=entry,
                    memory_bytes=(info.memory_bytes or 0) if info else 0,
                    loaded=True,
                    loading=loading,
                    # Higher priority than the incoming model, or not ours: not a candidate.
                    pinned=info is None or info.pinned or info.priority > incoming_priority,
                    in_flight=in_flight,
                    last_used=float(last_used),
                )
            )
        return states

    async def _load_entry(
        self, client: TritonReplicaClient, entry: str, observation: ReplicaObservation
    ) -> None:
        """Load what shoal.fleet.hot_swap says: the encode step alone where the light steps stayed
        loaded after an eviction (the ensemble comes back with it), else the ensemble in one
        call (Triton loads its steps with it, in parallel; steps first and then the ensemble
        would load every step twice: 11.5 s against 3.5 s measured with 3 python steps).
        On a failure, unload everything of the entry the replica holds (no residue)."""
        key = (client.replica.name, entry)
        self._loading.add(key)
        started = time.monotonic()
        targets = models_to_load(entry, light_steps_ready(entry, observation.states))
        try:
            for position, target in enumerate(targets):
                if position and (await client.observe()).ready(target):
                    continue
                await client.load(target)
        except (LoadFailed, ReplicaUnreachable):
            metrics.LOAD_FAILURES.labels(replica=client.replica.name).inc()
            with contextlib.suppress(ReplicaUnreachable):  # it restarted: nothing is left
                await self._unload_models(client, models_to_remove(entry), await client.observe())
            raise
        finally:
            self._loading.discard(key)
        elapsed = time.monotonic() - started
        metrics.LOADS.labels(replica=client.replica.name).inc()
        metrics.LOAD_SECONDS.observe(elapsed)
        how = "encode step" if len(targets) > 1 else "whole entry"
        log.info("loaded %s (%s) on %s in %.2f s", entry, how, client.replica.name, elapsed)

    async def _wait_until_released(
        self, client: TritonReplicaClient, entries: Sequence[str]
    ) -> list[str]:
        """Until none of `entries` holds memory. Triton answers an unload at once and frees
        the memory only once in-flight requests finish: loading before that would overcommit
        the GPU. Returns the entries still holding memory at the deadline."""
        deadline = time.monotonic() + UNLOAD_WAIT_S
        while True:
            states = (await client.observe()).states
            held = [e for e in entries if holds_memory(e, states)]
            if not held or time.monotonic() > deadline:
                return held
            await asyncio.sleep(UNLOAD_POLL_S)

    async def _unload_models(
        self, client: TritonReplicaClient, names: Sequence[str], observation: ReplicaObservation
    ) -> None:
        """Unload those of `names` the replica holds, in the given order."""
        for name in names:
            if observation.states.get(name) in ("READY", "LOADING"):
                await client.unload(name)
        metrics.UNLOADS.labels(replica=client.replica.name).inc()

    # -- removing -----------------------------------------------------------------------------
    async def unload_everywhere(
        self, namespace: str, entry: str, replicas: Sequence[Replica]
    ) -> dict[str, str]:
        """Unload the entry from every replica that has any of its models; errors by replica."""
        errors: dict[str, str] = {}
        async with self._model_locks[(namespace, entry)]:
            for replica in replicas:
                client = self._client_factory(replica)
                async with self._replica_locks[replica.name]:
                    try:
                        observation = await client.observe()
                        if present(entry, observation.states):
                            await self._unload_models(client, models_to_remove(entry), observation)
                            log.info("unloaded %s from %s", entry, replica.name)
                    except ReplicaUnreachable as exc:
                        errors[replica.name] = str(exc)
        return errors

    async def models_per_replica(self, replicas: Sequence[Replica]) -> dict[str, int]:
        seen, _ = await self.observe_all(replicas)
        return {name: len(_entries_holding_memory(o)) for name, o in seen.items()}


def _entries_holding_memory(observation: ReplicaObservation) -> list[str]:
    """Entries that count against the budget: an evicted entry's light steps do not."""
    entries = {entry_of(name) for name in observation.states}
    return sorted(e for e in entries if holds_memory(e, observation.states))


def _last_used(entry: str, observations: Sequence[ReplicaObservation] | object) -> datetime | None:
    names = set(triton_models(entry))
    latest = 0
    for observation in observations:  # type: ignore[union-attr]
        for name in names:
            latest = max(latest, observation.last_inference_ms.get(name, 0))
    return datetime.fromtimestamp(latest / 1000, tz=UTC) if latest else None
