"""The replica driver: the one sequence that changes what a Triton replica has loaded.

    observe (index, statistics, queue) -> plan (shoal.fleet.placement, pure) -> evict ->
    wait until Triton has released the victims' memory -> load (with a deadline) -> clean up

`shoal serve` (one local replica, shoal.runtime.controller), the operator (each pool replica,
through shoal.fleet.placer) and, through them, the router use it; nothing else loads or unloads.

Guarantees:
- control calls to one replica are serialized by the driver's lock, and every decision is taken
  inside it from a fresh observation, so two loads never race for the same free memory;
- memory is counted for every entry the replica holds: owned entries by what their owner says,
  others by `unowned_memory` (their manifest where they are shoal entries, else a default);
  an entry counts while it is loading, loaded or unloading, so the budget is never exceeded
  while Triton frees memory;
- a load has a deadline: past it the load is abandoned (LoadTimedOut), the lock is released and
  the entry backs off, so one hanging model never blocks the replica's others;
- nothing is handed to Triton before the entry check passes (EntryInvalid otherwise);
- a failed load leaves no residue (everything of the entry is unloaded again);
- failures back off per entry with a cap; a success or `forget_failures` resets it.

Which Triton models a swap touches is shoal.fleet.hot_swap's decision: an eviction unloads the
memory-heavy encode step only, a reload loads only it where the light steps stayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shoal.contract import STEP_ENCODE, step_name
from shoal.fleet.errors import (
    EntryInvalid,
    FleetError,
    LoadFailed,
    LoadTimedOut,
    ReplicaUnreachable,
)
from shoal.fleet.hot_swap import (
    entry_of,
    holds_memory,
    light_step_names,
    light_steps_ready,
    models_to_evict,
    models_to_load,
    models_to_remove,
    present,
)
from shoal.fleet.placement import DEFAULT_POLICY, EvictionPolicy, ModelState, make_policy, plan_load
from shoal.fleet.replica import Replica
from shoal.fleet.replica_client import ReplicaClient, ReplicaObservation

log = logging.getLogger(__name__)

RELEASE_WAIT_S = 60.0  # how long evicted models may take to release their memory
RELEASE_POLL_S = 0.05
# An entry nobody owns and whose size nobody knows: counted as this much, so it is evictable
# without being mistaken for free memory (docs/operator.md, "Placement and eviction").
DEFAULT_UNOWNED_MEMORY = 1 * 2**30
DEFAULT_LOAD_COST_S = 2.5  # a MiniLM-size encode step's reload here, until one is measured
SETTLE_WAIT_S = 600.0  # how long a removal keeps waiting for a hung load to end, to unload it
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0


def default_load_deadline(memory_bytes: int) -> float:
    """Seconds a load may take: 60 s plus 60 s per GiB the entry holds. On the 2-core test
    machines a MiniLM entry (260 MiB) loads whole in ~5 s, its encode step in ~2.5 s; a GPU
    replica pulling a 2 GB encoder from object storage takes tens of seconds."""
    return 60.0 + 60.0 * memory_bytes / 2**30


@dataclass(frozen=True)
class Resident:
    """What the owner of an entry says of it (the operator's InferenceModel, serve's manifest)."""

    entry: str
    memory_bytes: int
    pinned: bool = False
    priority: int = 0
    in_use: int = 0  # held and in-flight requests the router reports: never evicted meanwhile
    version: int | None = None  # the entry version to serve (its manifest's); None: any


@dataclass(frozen=True)
class DriverEvent:
    """What the driver did, for metrics, Events and the router (callbacks, no imports upward)."""

    kind: str  # loaded | evicted | removed | load_failed | load_timeout
    replica: str
    entry: str
    seconds: float = 0.0
    detail: str = ""


@dataclass
class LoadOutcome:
    loaded: bool
    evicted: list[str] = field(default_factory=list)
    reason: str = ""  # why not loaded, in words a person can act on
    error: FleetError | None = None  # the typed failure, when a load was tried and failed


class Client(Protocol):
    replica: Replica

    async def observe(self) -> ReplicaObservation: ...

    async def ready_models(self) -> dict[str, str]: ...

    async def load(self, triton_model: str, timeout_s: float) -> None: ...

    async def unload(self, triton_model: str) -> None: ...


@dataclass
class _Backoff:
    failures: int = 0
    not_before: float = 0.0
    error: FleetError | None = None


class ReplicaDriver:
    def __init__(
        self,
        replica: Replica,
        *,
        client: Client | None = None,
        policy: EvictionPolicy | None = None,
        entry_check: Callable[[str], list[str]] | None = None,
        unowned_memory: Callable[[str], int | None] | None = None,
        load_deadline: Callable[[int], float] = default_load_deadline,
        on_event: Callable[[DriverEvent], None] | None = None,
        keep_light_steps: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replica = replica
        self.client: Client = client or ReplicaClient(replica)
        self.policy = policy or make_policy(DEFAULT_POLICY)
        self._entry_check = entry_check
        # (entry, version) that passed once: hot swaps do not hash again
        self._checked_ok: set[tuple[str, int | None]] = set()
        self._unowned_memory = unowned_memory
        self.load_deadline = load_deadline
        self._on_event = on_event
        self.keep_light_steps = keep_light_steps
        self._clock = clock
        self.lock = asyncio.Lock()
        self._loading: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}
        self.last_observation: ReplicaObservation | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._held_since: dict[str, float] = {}  # entry -> wall ms when first seen holding memory
        self._inference_seen: dict[str, int] = {}  # entry -> Triton's inference count last seen
        self._load_seconds: dict[str, float] = {}  # entry -> last measured load time

    def use_repository(
        self,
        entry_check: Callable[[str], list[str]] | None,
        unowned_memory: Callable[[str], int | None] | None,
    ) -> None:
        """Where the replica's model repository became readable (the operator learns a pool's
        repository from its spec): check entries before loading, size unowned ones."""
        self._entry_check = entry_check
        self._unowned_memory = unowned_memory

    # -- observing ----------------------------------------------------------------------------
    async def observe(self) -> ReplicaObservation:
        observation = await self.client.observe()
        holding = set(self.holding(observation))
        now_ms = time.time() * 1000
        for entry in holding - self._held_since.keys():
            # Loaded (by us or a client) counts as a use: a model loaded a moment ago is not
            # the first evicted just because nobody has called it yet.
            self._held_since[entry] = now_ms
        for entry in self._held_since.keys() - holding:
            del self._held_since[entry]
        self._record_uses(observation)
        self.last_observation = observation
        return observation

    def _record_uses(self, observation: ReplicaObservation) -> None:
        """Tell the policy how many requests each entry served since the last look (frequency
        for GDSF); Triton's counts restart with a reload."""
        for entry, count in observation.inference_count.items():
            if entry_of(entry) != entry:
                continue  # the ensemble's count is the entry's
            seen = self._inference_seen.get(entry, 0)
            new = count - seen if count >= seen else count
            self._inference_seen[entry] = count
            if new > 0:
                self.policy.record_use(self._state_for_policy(entry), count=new)

    def _state_for_policy(self, entry: str, memory_bytes: int | None = None) -> ModelState:
        memory = memory_bytes if memory_bytes is not None else self._memory_of(entry, {})
        return ModelState(entry, memory, load_cost_s=self._load_cost(entry))

    def _load_cost(self, entry: str) -> float:
        return self._load_seconds.get(entry, DEFAULT_LOAD_COST_S)

    def holding(self, observation: ReplicaObservation) -> list[str]:
        """Entries that count against the budget (an evicted entry's light steps do not)."""
        entries = {entry_of(name) for name in observation.states}
        return sorted(e for e in entries if holds_memory(e, observation.states))

    def used_bytes(self, observation: ReplicaObservation, residents: Mapping[str, Resident]) -> int:
        return sum(self._memory_of(e, residents) for e in self.holding(observation))

    def model_states(
        self,
        observation: ReplicaObservation,
        residents: Mapping[str, Resident],
        incoming_priority: int = 0,
    ) -> list[ModelState]:
        """Placement's view of every entry holding memory here."""
        states = []
        for entry in self.holding(observation):
            owner = residents.get(entry)
            names = [m for m in observation.states if entry_of(m) == entry]
            loading = entry in self._loading or any(
                observation.states.get(m) in ("LOADING", "UNLOADING") for m in names
            )
            in_flight = sum(observation.pending_requests.get(m, 0) for m in names)
            last_used = max(
                [observation.last_inference_ms.get(m, 0) for m in names]
                + [self._held_since.get(entry, 0.0)]
            )
            states.append(
                ModelState(
                    name=entry,
                    memory_bytes=self._memory_of(entry, residents),
                    loaded=True,
                    loading=loading,
                    pinned=bool(owner and owner.pinned),
                    # A higher priority than the incoming model protects like a pin, named so.
                    protected=(
                        "higher priority" if owner and owner.priority > incoming_priority else ""
                    ),
                    in_flight=in_flight + (owner.in_use if owner else 0),
                    last_used=float(last_used),
                    load_cost_s=self._load_cost(entry),
                )
            )
        return states

    def _memory_of(self, entry: str, residents: Mapping[str, Resident]) -> int:
        if entry in residents:
            return residents[entry].memory_bytes
        known = self._unowned_memory(entry) if self._unowned_memory else None
        return known if known is not None else DEFAULT_UNOWNED_MEMORY

    # -- loading ------------------------------------------------------------------------------
    async def load(
        self,
        target: Resident,
        budget_bytes: int,
        residents: Mapping[str, Resident],
        *,
        allow_evict: bool = True,
    ) -> LoadOutcome:
        """Make `target` READY here, evicting by policy where the budget needs it (and where
        `allow_evict`). Typed failures come back in the outcome, except ReplicaUnreachable,
        which is raised (nothing on this replica can be decided)."""
        backoff = self._backoff.get(target.entry)
        if backoff and self._clock() < backoff.not_before:
            wait = backoff.not_before - self._clock()
            return LoadOutcome(
                False,
                reason=f"{backoff.error} (failed {backoff.failures} time(s); next try in "
                f"{wait:.0f} s)",
                error=backoff.error,
            )
        problems = await self.entry_problems(target.entry, target.version)
        if problems:
            error = EntryInvalid(target.entry, problems)
            return LoadOutcome(False, reason=str(error), error=error)
        async with self.lock:
            observation = await self.observe()  # fresh, inside the lock
            if observation.serves(target.entry, target.version) and observation.ready(
                step_name(target.entry, STEP_ENCODE)
            ):
                return LoadOutcome(True, reason="already loaded")
            # READY at another version: a re-export is rolled out by reloading the whole entry
            # (Triton serves the old version until the new one is READY; the caller drains
            # the replica first, shoal.operator.model_handlers).
            if _loading(target.entry, observation) and target.entry not in self._loading:
                # An earlier load (one that outlived its deadline, or a previous operator's) is
                # still running in Triton: wait for it, keep reporting why.
                earlier = self.failure(target.entry)
                return LoadOutcome(
                    False,
                    reason=f"{earlier or 'an earlier load'}; still loading in Triton",
                    error=earlier,
                )
            if _releasing(target.entry, observation):
                # Asked for while it is being evicted: load it again as soon as Triton has
                # released it, not after a fixed wait (its memory still counts meanwhile).
                observation = await self._wait_until_released([target.entry])
            plan = plan_load(
                ModelState(
                    target.entry,
                    target.memory_bytes,
                    loaded=holds_memory(target.entry, observation.states),
                    pinned=target.pinned,
                ),
                self.model_states(observation, residents, target.priority),
                budget_bytes,
                self.policy,
            )
            if not plan.admit:
                return LoadOutcome(False, reason=plan.reason)
            if plan.evict and not allow_evict:
                return LoadOutcome(
                    False,
                    reason=f"fits only by evicting {', '.join(plan.evict)} (eviction not "
                    "allowed for this request)",
                )
            evicted = await self._evict(plan.evict, observation, residents, reason=target.entry)
            if evicted:
                observation = await self._wait_until_released(evicted)
                still = [e for e in evicted if holds_memory(e, observation.states)]
                if still:
                    return LoadOutcome(
                        False,
                        evicted,
                        reason=f"evicted {', '.join(still)} but Triton still holds their memory "
                        f"after {RELEASE_WAIT_S:.0f} s (requests in flight); retrying",
                    )
            try:
                await self._load_entry(target, observation)
            except (LoadFailed, LoadTimedOut) as exc:
                self._note_failure(target.entry, exc)
                return LoadOutcome(False, evicted, reason=str(exc), error=exc)
            self._backoff.pop(target.entry, None)
            return LoadOutcome(True, evicted, reason="loaded")

    async def _load_entry(self, target: Resident, observation: ReplicaObservation) -> None:
        entry = target.entry
        deadline_s = self.load_deadline(target.memory_bytes)
        light_ready = light_steps_ready(entry, observation.states) and all(
            observation.serves(name, target.version) for name in light_step_names(entry)
        )
        targets = models_to_load(entry, light_ready, self.keep_light_steps)
        self._loading.add(entry)
        started = self._clock()
        try:
            for position, name in enumerate(targets):
                # The ensemble usually comes back READY by itself once its encode step is.
                if position and (await self.client.observe()).ready(name):
                    continue
                remaining = deadline_s - (self._clock() - started)
                if remaining <= 0:
                    raise LoadTimedOut(name, self.replica.name, deadline_s)
                # The deadline is ours (asyncio), the HTTP timeout only a backstop behind it.
                try:
                    await asyncio.wait_for(
                        self.client.load(name, timeout_s=remaining + 5.0), remaining
                    )
                except TimeoutError:
                    raise LoadTimedOut(name, self.replica.name, deadline_s) from None
        except LoadTimedOut as exc:
            # Triton goes on loading in the background and answers an unload of a LOADING
            # model only once that load ends, so nothing is unloaded now (that would hold the
            # lock for as long as the load hangs). Its memory still counts while it loads; if it
            # ends READY, the next try finds it loaded.
            self._emit("load_timeout", entry, self._clock() - started, str(exc))
            raise
        except LoadFailed as exc:
            self._emit("load_failed", entry, self._clock() - started, str(exc))
            await self._clean_up_after_failed_load(entry)
            raise
        finally:
            self._loading.discard(entry)
        elapsed = self._clock() - started
        self._load_seconds[entry] = elapsed
        self.policy.record_use(self._state_for_policy(entry, target.memory_bytes))
        how = "encode step" if len(targets) > 1 else "whole entry"
        log.info("loaded %s (%s) on %s in %.2f s", entry, how, self.replica.name, elapsed)
        self._emit("loaded", entry, elapsed, how)

    async def _clean_up_after_failed_load(self, entry: str) -> None:
        """Unload whatever of the entry the replica holds (the steps an ensemble load brought)."""
        with contextlib.suppress(ReplicaUnreachable):  # restarted: nothing is left
            observation = await self.client.observe()
            await self._unload(models_to_remove(entry), observation)

    def _note_failure(self, entry: str, error: FleetError) -> None:
        backoff = self._backoff.setdefault(entry, _Backoff())
        backoff.failures += 1
        backoff.error = error
        delay = min(BACKOFF_BASE_S * 2 ** (backoff.failures - 1), BACKOFF_CAP_S)
        backoff.not_before = self._clock() + delay

    def forget_failures(self, entry: str) -> None:
        """The entry changed (new spec, re-export): try it again at once."""
        self._backoff.pop(entry, None)
        self._checked_ok = {key for key in self._checked_ok if key[0] != entry}

    def failure(self, entry: str) -> FleetError | None:
        backoff = self._backoff.get(entry)
        return backoff.error if backoff else None

    async def entry_problems(self, entry: str, version: int | None = None) -> list[str]:
        """What `shoal repo check` finds wrong with the entry (remembered once it passes, per
        version: a re-export is checked again)."""
        if self._entry_check is None or (entry, version) in self._checked_ok:
            return []
        problems = await asyncio.to_thread(self._entry_check, entry)  # hashes files: off the loop
        if not problems:
            self._checked_ok.add((entry, version))
        return problems

    # -- evicting and removing ----------------------------------------------------------------
    async def _evict(
        self,
        victims: Sequence[str],
        observation: ReplicaObservation,
        residents: Mapping[str, Resident],
        reason: str,
    ) -> list[str]:
        for victim in victims:
            await self._unload(models_to_evict(victim, self.keep_light_steps), observation)
            self.policy.record_eviction(
                self._state_for_policy(victim, self._memory_of(victim, residents))
            )
            log.info("evicted %s from %s for %s", victim, self.replica.name, reason)
            self._emit("evicted", victim, detail=reason)
        return list(victims)

    async def enforce_budget(
        self, budget_bytes: int, residents: Mapping[str, Resident]
    ) -> list[str]:
        """Evict by policy until what the replica holds fits `budget_bytes` (a lowered budget,
        models loaded by someone else). Returns the evicted entries."""
        async with self.lock:
            observation = await self.observe()
            states = self.model_states(observation, residents)
            used = sum(m.memory_bytes for m in states)
            victims: list[str] = []
            for candidate in self.policy.order([m for m in states if m.evictable]):
                if used <= budget_bytes:
                    break
                victims.append(candidate.name)
                used -= candidate.memory_bytes
            if used > budget_bytes:
                log.warning(
                    "%s holds more than its budget and nothing more can be evicted now "
                    "(pinned, loading or in use)",
                    self.replica.name,
                )
            evicted = await self._evict(victims, observation, residents, reason="budget")
            if evicted:
                await self._wait_until_released(evicted)
            return evicted

    async def remove(self, entry: str) -> bool:
        """Unload everything of `entry` (ensemble first). True when something was unloaded.
        Parts still LOADING (a hung load) are unloaded by a background task once Triton has
        finished loading them: Triton answers their unload only then."""
        async with self.lock:
            observation = await self.observe()
            if not present(entry, observation.states):
                return False
            names = models_to_remove(entry)
            await self._unload(names, observation)
            loading = [n for n in names if observation.states.get(n) == "LOADING"]
            if loading:
                self._spawn(self._unload_once_settled(loading, SETTLE_WAIT_S))
            self.forget_failures(entry)
            log.info("unloaded %s from %s", entry, self.replica.name)
            self._emit("removed", entry)
            return True

    async def _unload_once_settled(self, names: Sequence[str], within_s: float) -> None:
        deadline = self._clock() + within_s
        pending = list(names)
        while pending and self._clock() < deadline:
            await asyncio.sleep(0.5)
            try:
                async with self.lock:
                    observation = await self.observe()
                    settled = [n for n in pending if observation.states.get(n) != "LOADING"]
                    await self._unload(settled, observation)
            except ReplicaUnreachable:
                return  # restarted: nothing of it is left
            pending = [n for n in pending if n not in settled]
        if pending:
            log.warning("%s still loading on %s; not unloaded", pending, self.replica.name)

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancel background clean-ups (the owner is stopping)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _unload(self, names: Sequence[str], observation: ReplicaObservation) -> None:
        """Unload those of `names` that are READY, in order."""
        for name in names:
            if observation.states.get(name) == "READY":
                await self.client.unload(name)

    async def _wait_until_released(self, entries: Sequence[str]) -> ReplicaObservation:
        """Until none of `entries` holds memory, or RELEASE_WAIT_S. Triton answers an unload at
        once and frees the memory only after in-flight requests finish: loading before that
        would overcommit the GPU."""
        deadline = self._clock() + RELEASE_WAIT_S
        while True:
            observation = await self.observe()
            if not any(holds_memory(e, observation.states) for e in entries):
                return observation
            if self._clock() > deadline:
                return observation
            await asyncio.sleep(RELEASE_POLL_S)

    def _emit(self, kind: str, entry: str, seconds: float = 0.0, detail: str = "") -> None:
        if self._on_event is not None:
            try:
                self._on_event(DriverEvent(kind, self.replica.name, entry, seconds, detail))
            except Exception:  # a listener's bug must not break placement
                log.exception("driver event listener failed on %s %s", kind, entry)


def _releasing(entry: str, observation: ReplicaObservation) -> bool:
    return observation.states.get(step_name(entry, STEP_ENCODE)) == "UNLOADING" or (
        observation.states.get(entry) == "UNLOADING"
    )


def _loading(entry: str, observation: ReplicaObservation) -> bool:
    """Any Triton model of the entry loading (an ensemble load loads its steps first, and the
    ensemble itself shows LOADING only at the end)."""
    return any(observation.states.get(m) == "LOADING" for m in models_to_remove(entry))
