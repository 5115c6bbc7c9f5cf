"""An InferenceModel's status, decided from what one reconciliation learned. Pure: no I/O.

Called by model_handlers.py (placement, drift, a router's ask, a deleted pool, and a refresh the
placement observer starts). The handler observes and acts; this module says what the status
becomes, which Events to post and whether to retry. It is the one writer of a model's phase and
conditions: whichever handler ran, the decision is made here from the status as it is now.
Some fields are also written outside it, as facts, never as decisions: `replicas`/`replicaAddresses`/
`loadedReplicas` where an eviction or the placement observer saw a copy go (evicted_status.py,
placement_observer.py), and `phase: Loading` shown once before a load. The rules:
- a condition's `lastTransitionTime` moves only when its status does (conditions.set_condition);
- an Event is posted only when a condition's meaning changes: its status or reason, or the spec
  generation it was judged against (a person changed the spec). A drift run that finds the same
  broken model again posts nothing, and a model that cannot be placed does not flap between
  Loading and Pending (`Loading` is shown once per generation, see `shows_loading`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.fleet.placer import PlacementResult
from shoal.operator.conditions import get_condition, set_condition
from shoal.operator.specs import ModelSpec

# Conditions whose changes are announced with an Event; "Ready" mirrors "Loaded".
ANNOUNCED = ("Valid", "Loaded", "DuplicateEntry")
# Loaded-condition reasons counted in shoal_operator_reconcile_errors at every attempt.
FAILURES = ("EntryInvalid", "LoadTimeout", "LoadFailed", "ReplicaUnreachable")
# Where the model is placed: cleared when that placement is gone (a deleted pool).
PLACEMENT_FIELDS = (
    "pool", "entry", "replicas", "replicaAddresses", "loadedReplicas", "lastUsed", "movedFrom",
)  # fmt: skip


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class StatusDecision:
    status: dict[str, Any]  # fields to write; None removes a field (merge patch)
    events: tuple[Event, ...] = ()
    retry: str = ""  # non-empty: the handler asks kopf to retry, with this message
    metric_reason: str = ""  # non-empty: counted in shoal_operator_reconcile_errors


@dataclass(frozen=True)
class Placed:
    """What a placement attempt on the model's pool found."""

    model: ModelSpec
    pool: str
    memory_bytes: int
    ready_replicas: int  # replicas the pool's Endpoints list
    result: PlacementResult
    allow_evict: bool  # a person asked (create, spec change); drift and resume do not evict
    duplicates: Sequence[str] = field(default_factory=tuple)  # other models of the same entry
    moved_from: dict[str, Any] | None = None  # the old copy still to unload after a move
    addresses: Sequence[Mapping[str, str]] = ()  # pod and host:ports of each loaded replica


def shows_loading(previous: dict[str, Any], generation: int | None, wanted: int) -> bool:
    """Whether to show `Loading` before placing: once per spec generation, not at each retry
    (a model that cannot be placed would flap Loading <-> Pending every few seconds)."""
    if wanted <= 0 or previous.get("phase") not in (None, "Pending", "Failed"):
        return False
    return previous.get("observedGeneration") != generation or not previous.get("conditions")


def invalid(
    previous: dict[str, Any],
    generation: int | None,
    reason: str,
    message: str,
    phase: str = "Failed",
    clear_placement: bool = False,
) -> StatusDecision:
    """A model that cannot be placed until a person changes something (spec, pool, memory)."""
    conditions = list(previous.get("conditions") or [])
    conditions = set_condition(conditions, "Valid", False, reason, message, generation)
    conditions = set_condition(conditions, "Ready", False, reason, message, generation)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions,
    }
    if clear_placement:
        status.update({key: None for key in PLACEMENT_FIELDS if key in previous})
        status["conditions"] = _without(conditions, "Loaded")
    events = _announcements(previous, status["conditions"])
    return StatusDecision(status, events, metric_reason=reason if events else "")


def placed(previous: dict[str, Any], generation: int | None, attempt: Placed) -> StatusDecision:
    """The status after a placement attempt: phase, Loaded/Ready/DuplicateEntry conditions,
    where the model is loaded, and whether to retry."""
    model, result = attempt.model, attempt.result
    conditions = list(previous.get("conditions") or [])
    conditions = set_condition(
        conditions, "Valid", True, "Valid", "spec, pool and memory are valid", generation
    )
    conditions = _duplicate_condition(conditions, attempt, generation)
    loaded = len(result.loaded_on)
    wanted = min(model.min_replicas, attempt.ready_replicas)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "pool": attempt.pool,
        "entry": model.entry,
        "memoryBytes": attempt.memory_bytes,
        "replicas": result.loaded_on,
        "replicaAddresses": [dict(a) for a in attempt.addresses],
        "servedVersion": served_version(attempt.addresses),
        "loadedReplicas": loaded,
        "movedFrom": attempt.moved_from,
    }
    if result.last_used:
        status["lastUsed"] = result.last_used.strftime("%Y-%m-%dT%H:%M:%SZ")
    phase, ok, reason, message, retry = _loaded(previous, attempt, loaded, wanted)
    status["phase"] = phase
    conditions = set_condition(conditions, "Loaded", ok, reason, message, generation)
    ready = phase == "Ready"
    conditions = set_condition(
        conditions, "Ready", ready, "Ready" if ready else "NotReady", message, generation
    )
    status["conditions"] = conditions
    failures = {**result.load_errors, **result.timed_out}
    if result.invalid_entry:
        status["lastError"] = result.invalid_entry
    elif failures:
        status["lastError"] = "; ".join(f"{r}: {e}" for r, e in sorted(failures.items()))
    elif ready and previous.get("lastError"):
        status["lastError"] = None
    if status["movedFrom"] is None and "movedFrom" not in previous:
        del status["movedFrom"]
    events = _announcements(previous, conditions)
    metric = reason if reason in FAILURES else ""
    return StatusDecision(status, events, retry, metric)


def served_version(addresses: Sequence[Mapping[str, str]]) -> str | None:
    """The entry version the replicas serve; during a rollout each version served ("1, 2")."""
    versions = sorted({a["version"] for a in addresses if a.get("version")}, key=_version_order)
    return ", ".join(versions) or None


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def _loaded(
    previous: dict[str, Any], attempt: Placed, loaded: int, wanted: int
) -> tuple[str, bool, str, str, str]:
    """(phase, Loaded ok, reason, message, retry message) of a placement attempt."""
    model, result = attempt.model, attempt.result
    where = ", ".join(result.loaded_on) or "-"
    if loaded >= model.min_replicas or (loaded >= wanted and attempt.ready_replicas):
        return "Ready", True, "Loaded", f"loaded on {loaded} replica(s): {where}", ""
    if result.invalid_entry:  # the entry check refused it: never handed to Triton
        return (
            ("Ready" if loaded else "Failed"),
            False,
            "EntryInvalid",
            result.invalid_entry,
            (result.invalid_entry),
        )
    if result.timed_out:
        waits = "; ".join(f"{r}: {e}" for r, e in sorted(result.timed_out.items()))
        message = (
            f"loading {model.entry} did not finish in time: {waits}. The replica keeps serving "
            "its other models; the operator retries with backoff"
        )
        return ("Ready" if loaded else "Failed"), False, "LoadTimeout", message, message
    if result.load_errors:
        errors = "; ".join(f"{r}: {e}" for r, e in sorted(result.load_errors.items()))
        message = (
            f"Triton failed to load {model.entry}: {errors}. Check the entry in the pool's "
            "model repository (shoal repo check); the operator retries with backoff"
        )
        return ("Ready" if loaded else "Failed"), False, "LoadFailed", message, message
    if result.unreachable and len(result.unreachable) == attempt.ready_replicas:
        message = "no replica answered: " + "; ".join(
            f"{r}: {e}" for r, e in sorted(result.unreachable.items())
        )
        return ("Ready" if loaded else "Pending"), False, "ReplicaUnreachable", message, message
    if not attempt.ready_replicas:
        reason = "NoReplicas"
    elif previous.get("phase") == "Evicted" or (
        # Was serving (its phase is this function's; the evicting handler has already emptied
        # its replica list, shoal.operator.evicted_status) and lost its place.
        previous.get("phase") == "Ready" and not loaded and not attempt.allow_evict
    ):
        reason = "Evicted"  # lost its place to another model; drift does not evict back
    else:
        reason = "NoCapacity"
    message = (
        f"loaded on {loaded} of {wanted or model.min_replicas} wanted replica(s): {result.blocked}"
    )
    phase = "Ready" if loaded else ("Evicted" if reason == "Evicted" else "Pending")
    return (
        phase,
        loaded > 0 and not result.blocked,
        reason,
        message,
        (message if attempt.allow_evict else ""),
    )


def _duplicate_condition(
    conditions: list[dict[str, Any]], attempt: Placed, generation: int | None
) -> list[dict[str, Any]]:
    if not attempt.duplicates:
        return _without(conditions, "DuplicateEntry")
    others = ", ".join(sorted(attempt.duplicates))
    message = (
        f"entry {attempt.model.entry} on pool {attempt.pool} is also used by InferenceModel(s) "
        f"{others}: it stays loaded until the last of them is deleted; give each model its own "
        "entry, or delete the duplicate"
    )
    return set_condition(conditions, "DuplicateEntry", True, "DuplicateEntry", message, generation)


def _without(conditions: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [c for c in conditions if c.get("type") != type_]


def _announcements(previous: dict[str, Any], conditions: list[dict[str, Any]]) -> tuple[Event, ...]:
    """One Event per announced condition whose meaning changed since the previous status."""
    events = []
    for type_ in ANNOUNCED:
        now = get_condition(conditions, type_)
        if now is None or _meaning(now) == _meaning(
            get_condition(previous.get("conditions"), type_)
        ):
            continue
        bad = (now["status"] == "True") == (type_ == "DuplicateEntry")
        if bad:
            events.append(Event("Warning", now["reason"], now["message"]))
        elif type_ == "Loaded":
            events.append(Event("Normal", now["reason"], now["message"]))
    return tuple(events)


def _meaning(condition: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if condition is None:
        return None
    return (condition["status"], condition["reason"], condition.get("observedGeneration"))
