"""The control loop of `shoal serve`: keeps the models loaded on one local Triton within a memory
budget, using shoal.fleet.placement for every decision and shoal.fleet.triton_control for every call.

- `ensure_loaded(name)` (shoal commands, quickstart, tests): plan with placement, unload what the
  plan evicts, then load. Control calls are serialized by one lock.
- `run()` polls Triton's repository index and statistics: models loaded by clients straight
  through Triton's repository API are noticed there, counted against the budget, and the least
  recently used others are evicted to make room; recency comes from `last_inference`.

Hot swap: which Triton models an eviction unloads and a load loads is decided in
shoal.fleet.hot_swap, shared with the operator: evicting unloads only the memory-heavy `<model>__encode`
step, the tokenize and postprocess steps (tens of MB each) stay loaded, the ensemble turns
UNAVAILABLE, and loading the encode step again brings the ensemble back by itself (measured on
Triton 2.51: ~2.4 s to reload the encode step vs ~5.2 s for the whole entry on this 2-core
machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.contract import STEP_ENCODE, step_name
from shoal.fleet.hot_swap import light_steps_ready, models_to_evict, models_to_load
from shoal.manifest import Manifest
from shoal.fleet.placement import (
    EvictionPolicy,
    LeastRecentlyUsed,
    ModelState,
    format_size,
    initial_loads,
    plan_load,
)
from shoal.fleet.triton_control import IndexEntry, TritonControl, TritonControlError

log = logging.getLogger(__name__)

UNLOAD_TIMEOUT_S = 30.0


class PlacementRefused(RuntimeError):
    """The model cannot be loaded within the budget now (the reason says why and what to do)."""


class EntryBroken(PlacementRefused):
    """The entry fails `shoal repo check`: it is not handed to Triton (a python step without its
    model.py hangs Triton's load forever, and every other load behind it)."""


class UnknownModel(LookupError):
    """No entry of that name in the served repository."""


@dataclass
class EntryStatus:
    """What the controller knows of one entry (an ensemble and its three steps)."""

    name: str
    memory_bytes: int
    pinned: bool = False
    ensemble: str | None = None  # Triton state of the ensemble
    encode: str | None = None  # Triton state of <name>__encode: the step that holds the memory
    light_steps_ready: bool = False  # tokenize and postprocess
    last_used_ms: float = 0.0
    load_seconds: float = 2.5  # last measured (re)load time, for cost-aware policies
    reason: str = ""  # Triton's reason for an UNAVAILABLE encode/ensemble

    @property
    def loaded(self) -> bool:
        return self.encode == "READY"

    @property
    def loading(self) -> bool:
        return self.encode == "LOADING" or (self.encode == "READY" and self.ensemble == "LOADING")

    @property
    def ready(self) -> bool:
        return self.ensemble == "READY" and self.encode == "READY"


class LocalController:
    def __init__(
        self,
        control: TritonControl,
        manifests: dict[str, Manifest],
        *,
        budget_bytes: int | None = None,
        policy: EvictionPolicy | None = None,
        pinned: set[str] | frozenset[str] = frozenset(),
        metrics_url: str | None = None,
        keep_light_steps: bool = True,
        entry_check: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.control = control
        # name -> problems (shoal.model_repository.repository.check_entry); None: no check.
        self._entry_check = entry_check
        self._checked_ok: set[str] = set()  # passed once: hot swaps do not hash again
        self.manifests = dict(manifests)
        self.budget_bytes = budget_bytes if budget_bytes is not None else 2**63
        self.policy = policy or LeastRecentlyUsed()
        self.metrics_url = metrics_url
        self.keep_light_steps = keep_light_steps
        self.entries = {
            name: EntryStatus(name, m.memory_bytes, pinned=name in pinned)
            for name, m in sorted(self.manifests.items())
        }
        unknown_pins = sorted(set(pinned) - set(self.entries))
        if unknown_pins:
            raise UnknownModel(self._unknown_message(unknown_pins[0]))
        self._lock = asyncio.Lock()
        self._in_flight: dict[str, int] = {}  # pending in Triton (its metrics)
        # Requests a router in front holds or has in flight, per model: they count as use, so
        # their model is not evicted (set by shoal.router.local_placement).
        self.router_in_use: dict[str, int] = {}
        # Called with (entry, loaded) after each load (True) and eviction (False).
        self.listeners: list[Callable[[str, bool], None]] = []

    # -- what placement sees --------------------------------------------------------------------
    def model_states(self) -> list[ModelState]:
        return [
            ModelState(
                name=e.name,
                memory_bytes=e.memory_bytes,
                loaded=e.loaded,
                loading=e.loading,
                pinned=e.pinned,
                in_flight=self._in_flight.get(e.name, 0) + self.router_in_use.get(e.name, 0),
                last_used=e.last_used_ms,
                load_cost_s=e.load_seconds,
            )
            for e in self.entries.values()
        ]

    def used_bytes(self) -> int:
        return sum(e.memory_bytes for e in self.entries.values() if e.loaded or e.loading)

    # -- observing Triton -----------------------------------------------------------------------
    async def refresh(self) -> None:
        """Read states from the repository index and recency from the statistics."""
        index: dict[str, IndexEntry] = {e.name: e for e in await self.control.index()}
        states = {name: row.state for name, row in index.items()}
        now_ms = time.time() * 1000
        for entry in self.entries.values():
            encode = index.get(step_name(entry.name, STEP_ENCODE))
            ensemble = index.get(entry.name)
            was_holding = entry.loaded or entry.loading
            entry.encode = encode.state if encode else None
            entry.ensemble = ensemble.state if ensemble else None
            entry.light_steps_ready = light_steps_ready(entry.name, states)
            entry.reason = (encode.reason if encode else "") or (
                ensemble.reason if ensemble else ""
            )
            if not was_holding and (entry.loaded or entry.loading):
                # Loaded by someone else: count it as just used, so it is not the first evicted.
                entry.last_used_ms = max(entry.last_used_ms, now_ms)
        for stats in await self.control.statistics():
            entry = self.entries.get(stats.name)
            if entry and stats.last_inference_ms > entry.last_used_ms:
                entry.last_used_ms = float(stats.last_inference_ms)
                self.policy.record_use(self._state(entry.name))
        if self.metrics_url:
            try:
                self._in_flight = await self.control.pending_requests(self.metrics_url)
            except TritonControlError as exc:
                log.debug("pending requests unavailable: %s", exc)

    def _state(self, name: str) -> ModelState:
        return next(m for m in self.model_states() if m.name == name)

    # -- acting ---------------------------------------------------------------------------------
    async def start(self, load: list[str] | None = None) -> list[str]:
        """Load `load` (default: every entry that fits the budget, pinned first, then by name).
        Returns what was loaded."""
        async with self._lock:
            await self.refresh()
            if load is None:
                broken = {}
                for name in self.entries:
                    problems = await self._entry_problems(name)
                    if problems:
                        broken[name] = problems
                        log.warning(
                            "not loading %s: %s", name, self._broken_message(name, problems)
                        )
                candidates = [m for m in self.model_states() if m.name not in broken]
                chosen, skipped = initial_loads(candidates, self.budget_bytes)
                for name, why in skipped.items():
                    log.info("not loading %s at start: %s", name, why)
            else:
                for name in load:
                    self._require(name)
                chosen = list(dict.fromkeys(load))
        for name in chosen:
            await self.ensure_loaded(name)
        return chosen

    async def ensure_loaded(self, name: str) -> EntryStatus:
        """Load `name` if it is not ready, evicting by policy first when the budget needs it."""
        self._require(name)
        async with self._lock:
            await self.refresh()
            entry = self.entries[name]
            if entry.ready:
                entry.last_used_ms = max(entry.last_used_ms, time.time() * 1000)
                return entry
            problems = await self._entry_problems(name)
            if problems:
                raise EntryBroken(self._broken_message(name, problems))
            plan = plan_load(self._state(name), self.model_states(), self.budget_bytes, self.policy)
            if not plan.admit:
                raise PlacementRefused(plan.reason)
            for victim in plan.evict:
                await self._evict(victim)
            await self._load(entry)
            return entry

    async def enforce_budget(self) -> list[str]:
        """Evict by policy until loaded models fit the budget (after loads made by clients)."""
        async with self._lock:
            await self.refresh()
            evicted: list[str] = []
            while self.used_bytes() > self.budget_bytes:
                candidates = [m for m in self.model_states() if m.evictable]
                if not candidates:
                    log.warning(
                        "loaded models use %s, over the %s budget, and none can be evicted now",
                        format_size(self.used_bytes()),
                        format_size(self.budget_bytes),
                    )
                    break
                victim = self.policy.order(candidates)[0].name
                await self._evict(victim)
                evicted.append(victim)
            return evicted

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        """Poll until `stop` is set; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                evicted = await self.enforce_budget()
                if evicted:
                    log.info("over budget: evicted %s", ", ".join(evicted))
            except TritonControlError as exc:
                log.warning("control loop: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def _evict(self, name: str) -> None:
        entry = self.entries[name]
        started = time.monotonic()
        targets = models_to_evict(name, self.keep_light_steps)
        for target in targets:
            await self.control.unload(target)
        # The ensemble goes UNAVAILABLE with its encode step: wait for both.
        await self.control.wait_until_unloaded(
            list(dict.fromkeys([*targets, name])), UNLOAD_TIMEOUT_S
        )
        self.policy.record_eviction(self._state(name))
        entry.encode = "UNAVAILABLE"
        entry.ensemble = "UNAVAILABLE"
        log.info("evicted %s in %.2fs", name, time.monotonic() - started)
        self._notify(name, loaded=False)

    async def _load(self, entry: EntryStatus) -> None:
        started = time.monotonic()
        targets = models_to_load(entry.name, entry.light_steps_ready, self.keep_light_steps)
        for position, target in enumerate(targets):
            # The ensemble usually comes back READY by itself once its encode step is.
            if position and await self.control.is_model_ready(target):
                continue
            await self.control.load(target)
        how = "encode step" if len(targets) > 1 else "whole entry"
        entry.load_seconds = time.monotonic() - started
        entry.encode = entry.ensemble = "READY"
        entry.light_steps_ready = True
        entry.last_used_ms = max(entry.last_used_ms, time.time() * 1000)
        self.policy.record_use(self._state(entry.name))
        log.info("loaded %s (%s) in %.2fs", entry.name, how, entry.load_seconds)
        self._notify(entry.name, loaded=True)

    def _notify(self, name: str, loaded: bool) -> None:
        for listener in self.listeners:
            try:
                listener(name, loaded)
            except Exception:  # a listener's bug must not break placement
                log.exception("placement listener failed on %s", name)

    async def _entry_problems(self, name: str) -> list[str]:
        if self._entry_check is None or name in self._checked_ok:
            return []
        problems = await asyncio.to_thread(self._entry_check, name)  # hashes files: off the loop
        if not problems:
            self._checked_ok.add(name)
        return problems

    @staticmethod
    def _broken_message(name: str, problems: list[str]) -> str:
        return (
            f"model {name!r} is not loaded because its repository entry is incomplete or "
            f"inconsistent: {'; '.join(problems)}. Re-export it (shoal export), or fix the "
            "files; `shoal repo check DIR` lists every problem"
        )

    def _require(self, name: str) -> None:
        if name not in self.entries:
            raise UnknownModel(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(self.entries) or "none"
        return f"no model named {name!r} in the served repository (models: {known})"
