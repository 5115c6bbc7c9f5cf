"""InferenceModel handlers: placement on the pool's replicas, drift repair, moves, unload on delete.

Registered with kopf by importing shoal.operator.handlers. The work is in shoal.fleet.placer
(through one replica driver per replica); the status decision is model_status.py (pure); this
module observes, acts and writes what they decide.

When a model may evict others: on create and on a spec change (a person asked for it). The drift
timer and a restarted operator (resume) only load where the model fits without evicting, so an
evicted model does not evict back (no ping-pong); it stays `Evicted` until memory frees, its spec
changes, or the router asks for it.

A model that moves (spec.pool, spec.entry or the gpuClass's pool changes) is loaded on its new
target first; its old copy is unloaded once the new one is Ready (`status.movedFrom` remembers it
until then, with the replicas where it is READY: the router serves from it meanwhile). Several
InferenceModels may use one entry on one pool: the copy is unloaded only when the last of them
goes, and each carries a `DuplicateEntry` condition naming the others.

A re-exported entry (a new version in its manifest, where the pool's repository is readable) is
rolled out replica by replica, each drained from `status.replicas` while it reloads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf

from shoal.fleet.placer import FOR_BUDGET, KnownModel, PlacementResult
from shoal.manifest import Manifest, ManifestError
from shoal.operator import metrics
from shoal.operator.conditions import set_condition, status_changes
from shoal.operator.crds import API_VERSION, GROUP, MODEL_KIND, MODEL_PLURAL, POOL_PLURAL, VERSION
from shoal.operator.demand_annotations import with_router_use
from shoal.operator.evicted_status import withdraw_evicted
from shoal.operator.known_models import index_entries, known, known_on_pool, users_of
from shoal.operator.model_status import (
    Placed,
    StatusDecision,
    invalid,
    placed,
    shows_loading,
)
from shoal.operator.outages import tolerates_api_outage
from shoal.operator.replicas import replica_addresses, replicas_from_endpoints
from shoal.operator.settings import DRIFT_INTERVAL_S, UNLOAD_DEADLINE_S, retry_delay
from shoal.operator.specs import ModelSpec, PoolSpec, SpecError, model_spec, pool_spec
from shoal.sizes import format_size

MODEL = (GROUP, VERSION, MODEL_PLURAL)
POOL = (GROUP, VERSION, POOL_PLURAL)
log = logging.getLogger(__name__)


class Unplaceable(Exception):
    """The model cannot be placed until a person (or another object) changes something."""

    def __init__(self, reason: str, message: str, phase: str = "Failed") -> None:
        super().__init__(message)
        self.reason = reason
        self.phase = phase


@kopf.index(*MODEL)
def inferencemodel_by_pool(
    name: str, namespace: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any
) -> dict[tuple[str, str], KnownModel]:
    """Models by (namespace, pool): what placement knows of the others on the same replicas."""
    return index_entries(name, namespace, dict(spec), dict(status), meta.get("uid"))


@kopf.on.create(*MODEL)
@kopf.on.update(*MODEL, field="spec")
@tolerates_api_outage
async def inferencemodel_place(**kwargs: Any) -> None:
    """A new or changed model: place it, evicting by policy where memory is short."""
    await _reconcile(allow_evict=True, raise_for_retry=True, **kwargs)


@kopf.on.resume(*MODEL)
@tolerates_api_outage
async def inferencemodel_resume(**kwargs: Any) -> None:
    """Operator restart: read the replicas, finish what is missing, evict nothing."""
    await _reconcile(allow_evict=False, raise_for_retry=True, **kwargs)


@kopf.timer(*MODEL, interval=DRIFT_INTERVAL_S, initial_delay=DRIFT_INTERVAL_S)
@tolerates_api_outage
async def inferencemodel_drift(**kwargs: Any) -> None:
    """Compare the replicas with the desired placement and repair (a restarted Triton gets its
    models back); refresh loaded replicas and last use; finish a move."""
    await _reconcile(allow_evict=False, raise_for_retry=False, **kwargs)


@kopf.on.delete(*MODEL)
@tolerates_api_outage
async def inferencemodel_delete(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    inferencemodel_by_pool: kopf.Index,
    **_: Any,
) -> None:
    """Unload the model from every replica of its pools before the object goes (finalizer),
    unless another InferenceModel uses the same entry there. Gives up after
    UNLOAD_DEADLINE_S from the deletion with the reason in an Event: a replica that does not
    answer must not hold the object forever."""
    try:
        model = model_spec(name, namespace, dict(spec))
    except SpecError:
        return  # never placed
    remaining = _deletion_deadline(meta) - datetime.now(tz=UTC).timestamp()
    problems = []
    for pool_name, entry in _targets(model, dict(status)):
        others = users_of(inferencemodel_by_pool.get((namespace, pool_name), []), entry, name)
        if others:
            kopf.info(body, reason="KeptForOthers", message=(
                f"{entry} stays loaded on pool {pool_name}: InferenceModel(s) "
                f"{', '.join(others)} use it too"
            ))  # fmt: skip
            continue
        problem = await _unload_from_pool(
            memo.kube, memo.placer, body, namespace, pool_name, entry, remaining
        )
        if problem:
            problems.append(problem)
    if not problems:
        return
    message = "; ".join(problems)
    metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason="UnloadFailed").inc()
    if remaining <= 0:
        kopf.warn(body, reason="UnloadAbandoned", message=(
            f"deleted after {UNLOAD_DEADLINE_S:.0f} s without unloading everywhere: {message}. "
            "A replica that restarts holds nothing (Triton starts with no model loaded); one "
            "that is alive but unreachable keeps the copy until the pool's budget enforcement "
            "evicts it"
        ))  # fmt: skip
        return
    conditions = set_condition(
        status.get("conditions"), "Ready", False, "Unloading", f"unloading: {message}"
    )
    _write(patch, status, {"phase": "Pending", "conditions": conditions})
    raise kopf.TemporaryError(message, delay=min(retry_delay(retry), max(remaining, 1.0)))


@kopf.on.delete(*POOL, optional=True)  # optional: no finalizer, the pool goes at once
@tolerates_api_outage
async def inferencepool_gone(
    name: str,
    namespace: str,
    memo: kopf.Memo,
    inferencemodel_by_pool: kopf.Index,
    **_: Any,
) -> None:
    """A deleted pool took its replicas with it: its models lose their placement at once
    (replicas, loadedReplicas) and show `PoolNotFound`, instead of waiting for a drift run."""
    for model in list(inferencemodel_by_pool.get((namespace, name), [])):
        body = await memo.kube.get_model(namespace, model.name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        previous = body.get("status") or {}
        if previous.get("pool") == name:
            decision = invalid(
                previous, body["metadata"].get("generation"), "PoolNotFound",
                _pool_not_found(name, namespace), phase="Pending", clear_placement=True,
            )  # fmt: skip
        elif (previous.get("movedFrom") or {}).get("pool") == name:
            decision = StatusDecision({"movedFrom": None})  # the old copy went with the pool
        else:
            continue
        await memo.kube.patch_model_status(
            namespace, model.name, status_changes(previous, decision.status)
        )
        _post(body, decision)


async def _reconcile(
    *, raise_for_retry: bool, patch: kopf.Patch, retry: int = 0, **kwargs: Any
) -> None:
    """One placement of the model from one of its handlers: the status goes into kopf's patch."""
    outcome = await _decide(**kwargs)
    if outcome is None:
        return
    previous, decision = outcome
    _post(kwargs["body"], decision)
    _write(patch, previous, decision.status)
    if decision.retry and raise_for_retry:
        raise kopf.TemporaryError(decision.retry, delay=retry_delay(retry))


async def refresh(
    memo: kopf.Memo, namespace: str, name: str, index: kopf.Index, router_use: kopf.Index | None
) -> None:
    """Place a model again now, as its drift timer would (loading where it fits, evicting
    nothing), because its replicas changed behind the operator's back (a restarted Triton, a
    model unloaded by hand, a pod gone: shoal.operator.placement_observer). Its status is
    decided by the same code as in its own handlers and patched directly."""
    body = await memo.kube.get_model(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    outcome = await _decide(
        allow_evict=False, body=body, spec=body.get("spec") or {}, name=name,
        namespace=namespace, meta=body["metadata"], status=body.get("status") or {}, memo=memo,
        inferencemodel_by_pool=index, inferencemodel_router_use=router_use,
    )  # fmt: skip
    if outcome is None:
        return
    previous, decision = outcome
    _post(body, decision)
    changes = status_changes(previous, decision.status)
    if changes:
        await memo.kube.patch_model_status(namespace, name, changes)


async def _decide(
    *,
    allow_evict: bool,
    body: kopf.Body | dict[str, Any],
    spec: kopf.Spec | dict[str, Any],
    name: str,
    namespace: str,
    meta: kopf.Meta | dict[str, Any],
    status: kopf.Status | dict[str, Any],
    memo: kopf.Memo,
    inferencemodel_by_pool: kopf.Index,
    inferencemodel_router_use: kopf.Index | None = None,
    stopped: kopf.DaemonStopped | None = None,
    **_: Any,
) -> tuple[dict[str, Any], StatusDecision] | None:
    """Place the model and decide its status: (the status it was decided from, the decision),
    or None when there is nothing to write (deleted or stopped meanwhile)."""
    generation = meta.get("generation")
    previous = dict(status)
    try:
        model = model_spec(name, namespace, dict(spec))
        pool = await _resolve_pool(memo.kube, model)
        memory = _memory_of(model, pool)
    except SpecError as exc:
        decision = invalid(previous, generation, "InvalidSpec", str(exc))
    except Unplaceable as exc:
        gone = exc.reason == "PoolNotFound" and await _placement_gone(
            memo.kube, previous, namespace
        )
        decision = invalid(previous, generation, exc.reason, str(exc), exc.phase, gone)
    else:
        # The drift timer's stop flag is set when the model is being deleted (before the delete
        # handler runs): a drift run that was in flight must then neither load nor write status.
        is_stopped = (lambda: stopped.is_set()) if stopped is not None else None
        attempt = _Attempt(memo, body, model, pool, memory, meta.get("uid"), allow_evict)
        attempt.router_use = inferencemodel_router_use
        found = await attempt.run(previous, generation, inferencemodel_by_pool, is_stopped)
        if found is None:
            return None
        decision = found
    return previous, decision


class _Attempt:
    """One placement of one model on its pool, with what follows it: the old copy of a moved
    model unloaded, copies beyond a lowered minReplicas unloaded."""

    def __init__(
        self,
        memo: kopf.Memo,
        body: kopf.Body,
        model: ModelSpec,
        pool: PoolSpec,
        memory: int,
        uid: str | None,
        allow_evict: bool,
    ) -> None:
        self.kube, self.placer, self.body = memo.kube, memo.placer, body
        self.model, self.pool, self.memory, self.allow_evict = model, pool, memory, allow_evict
        self.me = known(model, memory, uid)
        self.router_use: kopf.Index | None = None  # leases of routers (demand_handlers.py)

    async def run(
        self,
        previous: dict[str, Any],
        generation: int | None,
        index: kopf.Index,
        stopped: Any,
    ) -> StatusDecision | None:
        model, pool = self.model, self.pool
        replicas = replicas_from_endpoints(
            await self.kube.get_endpoints(model.namespace, pool.name)
        )
        on_pool = [k for k in index.get((model.namespace, pool.name), []) if k.name != model.name]
        known_models = with_router_use(
            known_on_pool([*on_pool, self.me], pool), model.namespace, self.router_use
        )
        duplicates = users_of(on_pool, model.entry, model.name)
        if self.allow_evict and shows_loading(
            previous, generation, min(model.min_replicas, len(replicas))
        ):
            await self.kube.patch_model_status(model.namespace, model.name, {"phase": "Loading"})
        version = _manifest_version(model, pool)
        result = await self.placer.place(
            self.me, self.memory, model.min_replicas, replicas, pool.memory_per_replica,
            known_models, self.allow_evict, stopped=stopped, repository=_repository(pool),
            version=version,
        )  # fmt: skip
        if version is not None and _stale(result, version) and not (stopped and stopped()):
            result = await self._roll_out(version, replicas, known_models, result)
        if stopped is not None and stopped():
            return None
        # Decide from the status as it is now, not as it was when this run began: a placement
        # may wait for another handler of the same model (the drift timer behind a retry), and
        # deciding from the older status would announce that handler's findings a second time.
        current = await self.kube.get_model(model.namespace, model.name)
        if current is None:
            return None  # deleted meanwhile
        previous.clear()
        previous.update(current.get("status") or {})
        announce_evictions(self.body, result.evictions, known_models)
        await withdraw_evicted(self.kube, result.evictions, known_models)
        log.debug(
            "%s/%s placed (evict=%s): loaded on %s, blocked: %s",
            model.namespace, model.name, self.allow_evict, result.loaded_on, result.blocked or "-",
        )  # fmt: skip
        if self.allow_evict:
            # Shared entries keep as many copies as the most any of their models wants.
            wanted = known_models[model.entry].min_replicas
            await self._unload_extra_copies(replicas, result, wanted)
        moved_from = _moved_from(previous, pool.name, model.entry)
        new_copy_ready = len(result.loaded_on) >= min(model.min_replicas, len(replicas)) and (
            bool(result.loaded_on) or model.min_replicas == 0
        )
        if moved_from and new_copy_ready and await self._unload_old_copy(moved_from, index):
            moved_from = None
        if moved_from:
            # Until it is unloaded the old copy serves: the router routes there meanwhile.
            moved_from["replicas"] = await self._old_copy_replicas(moved_from)
        return placed(previous, generation, Placed(
            model, pool.name, self.memory, len(replicas), result, self.allow_evict,
            tuple(duplicates), moved_from,
            replica_addresses(result.loaded_on, replicas, result.versions),
        ))  # fmt: skip

    async def _roll_out(
        self,
        version: int,
        replicas: list[Any],
        known_models: dict[str, KnownModel],
        placed: PlacementResult,
    ) -> PlacementResult:
        """A re-exported entry (a new manifest version) reaches every replica that serves the
        old one, one replica at a time; each is taken out of `status.replicas` first, so the
        router sends its requests to the others (or holds them while none serves) and no
        request fails. The placement's evictions and failures are kept in the result."""
        model = self.model
        loaded = list(placed.loaded_on)

        async def drain(name: str, versions: Mapping[str, str]) -> None:
            serving = [r for r in loaded if r != name]
            await self.kube.patch_model_status(model.namespace, model.name, {
                "replicas": serving,
                "replicaAddresses": replica_addresses(serving, replicas, versions),
                "loadedReplicas": len(serving),
            })  # fmt: skip
            kopf.info(self.body, reason="RollingOut", message=(
                f"loading version {version} of {model.entry} on {name} (taken out of routing "
                "meanwhile)"
            ))  # fmt: skip

        rolled = await self.placer.roll_out(
            self.me, self.memory, version, replicas, self.pool.memory_per_replica, known_models,
            drain, repository=_repository(self.pool),
        )  # fmt: skip
        rolled.evictions = placed.evictions + rolled.evictions
        rolled.load_errors = {**placed.load_errors, **rolled.load_errors}
        rolled.timed_out = {**placed.timed_out, **rolled.timed_out}
        rolled.invalid_entry = rolled.invalid_entry or placed.invalid_entry
        rolled.blocked = rolled.blocked or placed.blocked
        rolled.last_used = placed.last_used
        return rolled

    async def _unload_extra_copies(
        self, replicas: list[Any], result: PlacementResult, wanted: int
    ) -> None:
        """A lowered minReplicas (a spec change) is enforced: copies beyond `wanted` are
        unloaded."""
        extra = set(result.loaded_on[wanted:])
        if not extra:
            return
        targets = [r for r in replicas if r.name in extra]
        errors = await self.placer.unload_everywhere(
            self.model.namespace, self.model.entry, targets
        )
        result.loaded_on = [r for r in result.loaded_on if r not in extra or r in errors]
        kopf.info(self.body, reason="Unloaded", message=(
            f"unloaded {self.model.entry} from {len(extra) - len(errors)} replica(s) beyond "
            f"minReplicas {wanted}"
        ))  # fmt: skip

    async def _old_copy_replicas(self, moved_from: dict[str, Any]) -> list[str]:
        """The old pool's ready replicas where the old copy is READY (empty when its pool is
        gone or none answers)."""
        replicas = replicas_from_endpoints(
            await self.kube.get_endpoints(self.model.namespace, moved_from["pool"])
        )
        ready, _ = await self.placer.ready_models(replicas)
        return sorted(name for name, models in ready.items() if moved_from["entry"] in models)

    async def _unload_old_copy(self, moved_from: dict[str, str], index: kopf.Index) -> bool:
        """After a move, once the new copy is Ready: unload the old one, unless another
        InferenceModel uses it. True when nothing of it is left to unload."""
        namespace, old_pool, old_entry = (
            self.model.namespace,
            moved_from["pool"],
            moved_from["entry"],
        )
        if users_of(index.get((namespace, old_pool), []), old_entry, self.model.name):
            return True  # the copy is theirs now
        problem = await _unload_from_pool(
            self.kube, self.placer, self.body, namespace, old_pool, old_entry, UNLOAD_DEADLINE_S
        )
        if problem:
            log.info("%s/%s: old copy not unloaded yet: %s", namespace, self.model.name, problem)
        return not problem


def _repository(pool: PoolSpec) -> Path | None:
    """The pool's model repository where the operator can read it (entry check, manifests)."""
    return Path(pool.local_repository) if pool.local_repository else None


def _moved_from(previous: dict[str, Any], pool: str, entry: str) -> dict[str, Any] | None:
    """The old target of a moved model that still holds a copy; None when there is none."""
    old = previous.get("movedFrom")
    if not old and previous.get("pool"):
        old = {"pool": previous["pool"], "entry": previous.get("entry") or entry}
    if not old or (old["pool"], old["entry"]) == (pool, entry):
        return None
    return {"pool": old["pool"], "entry": old["entry"]}


def _targets(model: ModelSpec, status: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (pool, entry) where the model may hold a copy: placed, moved from, asked for."""
    candidates = [
        (status.get("pool"), status.get("entry") or model.entry),
        ((status.get("movedFrom") or {}).get("pool"), (status.get("movedFrom") or {}).get("entry")),
        (model.pool, model.entry),
    ]
    return list(dict.fromkeys((p, e) for p, e in candidates if p and e))


async def _unload_from_pool(
    kube: Any, placer: Any, body: kopf.Body, namespace: str, pool: str, entry: str, within_s: float
) -> str:
    """Unload `entry` from every replica of `pool`, waiting at most `within_s` (at least 1 s)
    for replicas to answer; "" when done, else what is left and why."""
    if await kube.get_pool(namespace, pool) is None:
        return ""  # no pool, no replicas: nothing loaded anywhere
    replicas = replicas_from_endpoints(await kube.get_endpoints(namespace, pool))
    timeout = max(within_s, 1.0)
    try:
        errors = await asyncio.wait_for(
            placer.unload_everywhere(namespace, entry, replicas), timeout=timeout
        )
    except TimeoutError:
        return f"{entry} on pool {pool}: replicas did not answer within {timeout:.0f} s"
    if errors:
        return f"{entry} on pool {pool}: " + "; ".join(f"{r}: {e}" for r, e in errors.items())
    kopf.info(body, reason="Unloaded", message=(
        f"unloaded {entry} from {len(replicas)} replica(s) of pool {pool}"
    ))  # fmt: skip
    return ""


def _deletion_deadline(meta: kopf.Meta) -> float:
    """When a deletion stops waiting for replicas (epoch seconds)."""
    stamp = meta.get("deletionTimestamp")
    started = (
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        if stamp
        else datetime.now(tz=UTC).timestamp()
    )
    return started + UNLOAD_DEADLINE_S


async def _placement_gone(kube: Any, previous: dict[str, Any], namespace: str) -> bool:
    """Whether the pool the model was placed on no longer exists (its placement is stale)."""
    return not previous.get("pool") or await kube.get_pool(namespace, previous["pool"]) is None


def _pool_not_found(pool: str, namespace: str) -> str:
    return (
        f"InferencePool {pool!r} not found in namespace {namespace!r}: create it, "
        "or set spec.pool to an existing pool"
    )


async def _resolve_pool(kube: Any, model: ModelSpec) -> PoolSpec:
    namespace = model.namespace
    if model.pool:
        body = await kube.get_pool(namespace, model.pool)
        if body is None:
            raise Unplaceable("PoolNotFound", _pool_not_found(model.pool, namespace), "Pending")
    else:
        pools = [
            p
            for p in await kube.list_pools(namespace)
            if p["spec"].get("gpuClass") == model.gpu_class
        ]
        if not pools:
            raise Unplaceable(
                "PoolNotFound",
                f"no InferencePool with gpuClass {model.gpu_class!r} in namespace {namespace!r}: "
                "create one, or set spec.pool",
                phase="Pending",
            )
        body = sorted(pools, key=lambda p: p["metadata"]["name"])[0]
    try:
        return pool_spec(body["metadata"]["name"], namespace, body["spec"])
    except SpecError as exc:
        raise Unplaceable(
            "PoolInvalid", f"InferencePool {body['metadata']['name']!r} is invalid: {exc}"
        ) from exc


def _memory_of(model: ModelSpec, pool: PoolSpec) -> int:
    """The model's memory (spec.memory, else its manifest), checked against the pool's budget."""
    memory = model.memory_override
    if memory is None:
        memory = _manifest_memory(model, pool)
    if memory > pool.memory_per_replica:
        raise Unplaceable(
            "TooLarge",
            f"{model.entry} needs {format_size(memory)} but pool {pool.name} gives each "
            f"replica {format_size(pool.memory_per_replica)}: raise the pool's "
            "spec.memoryPerReplica, choose a pool with more memory, or export a smaller "
            "variant (shorter max length, fp16/int8)",
        )
    return memory


def _manifest_version(model: ModelSpec, pool: PoolSpec) -> int | None:
    """The entry version to serve: its manifest's, where the operator can read the pool's
    repository (None otherwise: any version serves, and nothing is rolled out)."""
    if not pool.local_repository:
        return None
    try:
        return Manifest.read(Path(pool.local_repository) / model.entry).version
    except ManifestError:
        return None


def _stale(result: PlacementResult, version: int) -> bool:
    """Whether a replica serves the entry at another version (a re-export to roll out)."""
    return any(v and v != str(version) for v in result.versions.values())


def _manifest_memory(model: ModelSpec, pool: PoolSpec) -> int:
    if not pool.local_repository:
        raise Unplaceable(
            "MemoryUnknown",
            f"the operator cannot read pool {pool.name!r}'s repository (its spec.storage.localPath "
            "is not set), so it cannot read the manifest of "
            f"{model.entry!r}: set spec.memory on the InferenceModel, or mount the repository "
            "in the operator and set the pool's spec.storage.localPath",
        )
    entry_dir = Path(pool.local_repository) / model.entry
    try:
        return Manifest.read(entry_dir).memory_bytes
    except ManifestError as exc:
        raise Unplaceable(
            "ManifestUnreadable",
            f"{exc}; export the model into the pool's repository (shoal export) or set spec.memory",
        ) from exc


def announce_evictions(
    body: kopf.Body | None, evictions: list[Any], known: dict[str, KnownModel]
) -> None:
    """An Event on the model that made room (if any) and on each evicted model."""
    for eviction in evictions:
        why = (
            f"to make room for {eviction.for_entry} (eviction policy)"
            if eviction.for_entry not in ("", FOR_BUDGET)
            else "to bring the replica within the pool's memoryPerReplica"
        )
        message = f"evicted {eviction.entry} from replica {eviction.replica} {why}"
        if body is not None:
            kopf.info(body, reason="Evicted", message=message)
        victim = known.get(eviction.entry)
        if victim is not None and victim.uid:
            ref = {
                "apiVersion": API_VERSION,
                "kind": MODEL_KIND,
                "metadata": {"name": victim.name, "namespace": victim.namespace, "uid": victim.uid},
            }
            kopf.info(ref, reason="Evicted", message=message)


def _post(body: Any, decision: StatusDecision) -> None:
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if decision.metric_reason:
        metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason=decision.metric_reason).inc()


def _write(
    patch: kopf.Patch, status: kopf.Status | dict[str, Any], desired: dict[str, Any]
) -> None:
    for key, value in status_changes(dict(status), desired).items():
        patch.status[key] = value
