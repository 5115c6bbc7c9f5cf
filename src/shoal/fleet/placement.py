"""Placement and eviction on one Triton replica: which models to unload so that another fits.

Pure logic, no I/O, deterministic: the same inputs give the same plan. `shoal serve` (the local
control loop in shoal.runtime.controller) and the operator both call it with what they know of a
replica: each model's memory (from its manifest), whether it is loaded, loading, pinned, serving
in-flight requests, and when it was last used (Triton's `last_inference`, the router).

Rules (DESIGN.md, "Placement and eviction"):
- a model larger than the whole budget is rejected with the reason;
- never evict a pinned model, one that is loading, or one with in-flight requests;
- otherwise evict in the order an `EvictionPolicy` gives, only as many as needed: callers build
  the policy with `make_policy` (`DEFAULT_POLICY`, GreedyDual-Size-Frequency, measured best by
  benchmarks/placement_sim.py); `plan_load` without a policy uses LRU, the one that needs no
  history;
- when even evicting every candidate would not make room, evict nothing and say what blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shoal.sizes import format_size


@dataclass(frozen=True)
class ModelState:
    """What placement knows of one model on one replica."""

    name: str
    memory_bytes: int
    loaded: bool = False
    loading: bool = False
    pinned: bool = False
    in_flight: int = 0
    last_used: float = 0.0  # any monotonic clock (Triton's last_inference ms works); 0 = never
    load_cost_s: float = 1.0  # how long a (re)load takes: cost-aware policies weigh it
    # Why it may not be evicted besides being pinned, in words for the blocker message:
    # e.g. "higher priority", "no InferenceModel". "" = no such reason.
    protected: str = ""

    @property
    def holds_memory(self) -> bool:
        return self.loaded or self.loading

    @property
    def evictable(self) -> bool:
        return (
            self.loaded
            and not self.loading
            and not self.pinned
            and not self.protected
            and self.in_flight == 0
        )


class EvictionPolicy(Protocol):
    """Orders eviction candidates: the first one is evicted first.

    `record_use` and `record_eviction` let stateful policies (GreedyDual-Size, -Frequency) keep
    their own bookkeeping; the caller reports uses (a load counts as one) and the evictions it
    carried out. A caller that sees uses in batches (Triton's `inference_count` between two
    polls) reports them with `count`; without these reports the stateful policies have no history
    and order by reload seconds per byte alone. Orders must be total and deterministic (break
    ties by name)."""

    name: str

    def order(self, candidates: Sequence[ModelState]) -> list[ModelState]: ...

    def record_use(self, model: ModelState, count: int = 1) -> None: ...

    def record_eviction(self, model: ModelState) -> None: ...


class LeastRecentlyUsed:
    """Evict the model used longest ago; never-used models first; ties by name."""

    name = "lru"

    def order(self, candidates: Sequence[ModelState]) -> list[ModelState]:
        return sorted(candidates, key=lambda m: (m.last_used, m.name))

    def record_use(self, model: ModelState, count: int = 1) -> None:
        pass

    def record_eviction(self, model: ModelState) -> None:
        pass


@dataclass
class GreedyDualSize:
    """Cost-aware eviction (Cao & Irani, 1997): each model's credit is H = L + cost / size, set
    when it is used; evict the lowest H, and raise the floor L to it. A model that is slow to
    reload for its size (cost = load seconds) stays longer than LRU would keep it; a big cheap
    one goes first. Credits age through L, so an unused model does not stay forever."""

    name: str = "gds"
    inflation: float = 0.0  # L
    credit: dict[str, float] = field(default_factory=dict)  # H per model

    def _credit_of(self, model: ModelState) -> float:
        return self.credit.get(model.name, self.inflation + _value_density(model))

    def order(self, candidates: Sequence[ModelState]) -> list[ModelState]:
        return sorted(candidates, key=lambda m: (self._credit_of(m), m.last_used, m.name))

    def record_use(self, model: ModelState, count: int = 1) -> None:
        self.credit[model.name] = self.inflation + _value_density(model)

    def record_eviction(self, model: ModelState) -> None:
        self.inflation = max(self.inflation, self._credit_of(model))
        self.credit.pop(model.name, None)


@dataclass
class GreedyDualSizeFrequency:
    """GreedyDual-Size-Frequency (Cherkasova, 1998): H = L + uses * cost / size, set at each use,
    where `uses` counts the uses since the model was last loaded; evict the lowest H and raise the
    floor L to it. Over GreedyDual-Size, a model used often since it was loaded outweighs one that
    was loaded for a single request (a burst's passer-by, a one-off), however recent.

    Aging: the count restarts at each load, and it counts at most `max_uses`, so a model that was
    hot and went cold is overtaken once L (which rises with every eviction) has grown by its
    capped credit; its old popularity does not keep it for ever (the classic GDSF pollution).
    `max_uses` = 64 measured best of 16/64/256/uncapped on the simulator's three traces, one value
    for all (benchmarks/placement_sim.py)."""

    name: str = "gdsf"
    max_uses: int = 64
    inflation: float = 0.0  # L
    floor_at_use: dict[str, float] = field(default_factory=dict)  # L when last used, per model
    uses: dict[str, int] = field(default_factory=dict)  # uses since loaded, capped

    def credit_of(self, model: ModelState) -> float:
        """H: models the policy has not seen count as used once, now."""
        if model.name not in self.uses:
            return self.inflation + _value_density(model)
        return self.floor_at_use[model.name] + self.uses[model.name] * _value_density(model)

    def order(self, candidates: Sequence[ModelState]) -> list[ModelState]:
        return sorted(candidates, key=lambda m: (self.credit_of(m), m.last_used, m.name))

    def record_use(self, model: ModelState, count: int = 1) -> None:
        self.uses[model.name] = min(self.uses.get(model.name, 0) + count, self.max_uses)
        self.floor_at_use[model.name] = self.inflation

    def record_eviction(self, model: ModelState) -> None:
        self.inflation = max(self.inflation, self.credit_of(model))
        self.uses.pop(model.name, None)
        self.floor_at_use.pop(model.name, None)


def _value_density(model: ModelState) -> float:
    # Seconds of reload per GiB held: scale-free enough that L and H stay readable.
    return model.load_cost_s / max(model.memory_bytes / 2**30, 1e-9)


POLICIES: dict[str, type] = {
    "lru": LeastRecentlyUsed,
    "gds": GreedyDualSize,
    "gdsf": GreedyDualSizeFrequency,
}
# What `shoal serve --policy`, the operator and the replica driver use unless told otherwise: the
# best measured on benchmarks/placement_sim.py (hit ratio and reload seconds on all three traces;
# docs/operator.md, "Placement").
DEFAULT_POLICY = "gdsf"


def make_policy(name: str = DEFAULT_POLICY) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown eviction policy {name!r}; choose one of: {', '.join(POLICIES)}"
        ) from None


@dataclass(frozen=True)
class LoadPlan:
    """The answer to "can `model` be loaded, and what must go first?"."""

    model: str
    admit: bool
    evict: tuple[str, ...] = ()
    reason: str = ""  # why it was not admitted, or what was done, in words a person can act on


def plan_load(
    target: ModelState,
    models: Iterable[ModelState],
    budget_bytes: int,
    policy: EvictionPolicy | None = None,
) -> LoadPlan:
    """Which models to unload so that `target` fits within `budget_bytes` on this replica.

    `models` is every model the replica knows (the target may be among them; it is ignored
    there). Memory counts for loaded and loading models."""
    policy = policy or LeastRecentlyUsed()
    if target.memory_bytes > budget_bytes:
        return LoadPlan(
            target.name,
            admit=False,
            reason=(
                f"model {target.name!r} needs {format_size(target.memory_bytes)}, more than the "
                f"whole memory budget of {format_size(budget_bytes)}; raise the budget "
                "(--memory-budget) or export a smaller variant (shorter max length, fp16/int8)"
            ),
        )
    others = [m for m in models if m.name != target.name]
    if target.holds_memory:
        return LoadPlan(target.name, admit=True, reason="already loaded")
    used = sum(m.memory_bytes for m in others if m.holds_memory)
    free = budget_bytes - used
    if target.memory_bytes <= free:
        return LoadPlan(target.name, admit=True, reason="fits")
    evicted: list[str] = []
    for candidate in policy.order([m for m in others if m.evictable]):
        evicted.append(candidate.name)
        free += candidate.memory_bytes
        if target.memory_bytes <= free:
            return LoadPlan(
                target.name,
                admit=True,
                evict=tuple(evicted),
                reason=f"evicting {', '.join(evicted)} ({policy.name})",
            )
    return LoadPlan(
        target.name,
        admit=False,
        reason=(
            f"model {target.name!r} needs {format_size(target.memory_bytes)} but only "
            f"{format_size(free)} of {format_size(budget_bytes)} can be freed: "
            f"{_blockers(others)}; retry when in-flight requests or loads finish, unpin a "
            "model, or raise the budget"
        ),
    )


def _blockers(models: Sequence[ModelState]) -> str:
    held = [m for m in models if m.holds_memory]
    kept = [m for m in held if not m.pinned and not m.protected]
    groups = {
        "pinned": [m.name for m in held if m.pinned],
        **{
            reason: [m.name for m in held if m.protected == reason and not m.pinned]
            for reason in sorted({m.protected for m in held if m.protected})
        },
        "loading": [m.name for m in kept if m.loading],
        "serving in-flight requests": [
            m.name for m in kept if m.loaded and m.in_flight and not m.loading
        ],
    }
    parts = [f"{label}: {', '.join(sorted(names))}" for label, names in groups.items() if names]
    return "; ".join(parts) or "nothing else is loaded"


def initial_loads(
    models: Sequence[ModelState], budget_bytes: int
) -> tuple[list[str], dict[str, str]]:
    """Models to load at start: pinned ones first, then the rest in the given (stable) order, each
    if it still fits. Returns (names to load, {skipped name: reason})."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    used = 0
    for model in sorted(models, key=lambda m: not m.pinned):  # stable: keeps the given order
        if used + model.memory_bytes <= budget_bytes:
            chosen.append(model.name)
            used += model.memory_bytes
        else:
            skipped[model.name] = (
                f"needs {format_size(model.memory_bytes)}, "
                f"{format_size(budget_bytes - used)} of the budget left"
            )
    return chosen, skipped
