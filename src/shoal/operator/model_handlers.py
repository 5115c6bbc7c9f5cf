"""InferenceModel handlers: placement on the pool's replicas, drift repair, unload on delete.

Registered with kopf by importing shoal.operator.handlers. The work is in shoal.fleet.placer
(through one replica driver per replica); this module
turns its results into status, conditions, Events and retries.

When a model may evict others: on create and on a spec change (a person asked for it). The drift
timer and a restarted operator (resume) only load where the model fits without evicting, so an
evicted model does not evict back (no ping-pong); it stays `Evicted` until memory frees, its spec
changes, or the router asks for it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.fleet.placement import format_size
from shoal.fleet.placer import KnownModel, PlacementResult
from shoal.manifest import Manifest, ManifestError
from shoal.operator import metrics
from shoal.operator.conditions import get_condition, set_condition, status_changes
from shoal.operator.crds import API_VERSION, GROUP, MODEL_KIND, MODEL_PLURAL, VERSION
from shoal.operator.demand_annotations import with_router_use
from shoal.operator.replicas import replicas_from_endpoints
from shoal.operator.settings import DRIFT_INTERVAL_S, retry_delay
from shoal.operator.specs import ModelSpec, PoolSpec, SpecError, model_spec, pool_spec

MODEL = (GROUP, VERSION, MODEL_PLURAL)
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
    try:
        model = model_spec(name, namespace, dict(spec))
    except SpecError:
        return {}
    pool = status.get("pool") or model.pool
    if not pool:
        return {}
    memory = model.memory_override or status.get("memoryBytes")
    return {(namespace, pool): _known(model, memory, meta.get("uid"))}


def _known(model: ModelSpec, memory: int | None, uid: str | None) -> KnownModel:
    return KnownModel(
        entry=model.entry,
        namespace=model.namespace,
        name=model.name,
        memory_bytes=memory,
        pinned=model.pinned,
        priority=model.priority,
        uid=uid,
    )


@kopf.on.create(*MODEL)
@kopf.on.update(*MODEL, field="spec")
async def inferencemodel_place(**kwargs: Any) -> None:
    """A new or changed model: place it, evicting by policy where memory is short."""
    await _reconcile(allow_evict=True, raise_for_retry=True, **kwargs)


@kopf.on.resume(*MODEL)
async def inferencemodel_resume(**kwargs: Any) -> None:
    """Operator restart: read the replicas, finish what is missing, evict nothing."""
    await _reconcile(allow_evict=False, raise_for_retry=True, **kwargs)


@kopf.timer(*MODEL, interval=DRIFT_INTERVAL_S, initial_delay=DRIFT_INTERVAL_S)
async def inferencemodel_drift(**kwargs: Any) -> None:
    """Compare the replicas with the desired placement and repair (a restarted Triton gets its
    models back); refresh loaded replicas and last use."""
    await _reconcile(allow_evict=False, raise_for_retry=False, **kwargs)


@kopf.on.delete(*MODEL)
async def inferencemodel_delete(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    status: kopf.Status,
    memo: kopf.Memo,
    retry: int,
    **_: Any,
) -> None:
    """Unload the model from every replica of its pool before the object goes (finalizer)."""
    try:
        model = model_spec(name, namespace, dict(spec))
    except SpecError:
        return  # never placed
    pool_name = status.get("pool") or model.pool
    if not pool_name or await memo.kube.get_pool(namespace, pool_name) is None:
        return  # no pool, no replicas: nothing loaded anywhere
    replicas = replicas_from_endpoints(await memo.kube.get_endpoints(namespace, pool_name))
    errors = await memo.placer.unload_everywhere(namespace, model.entry, replicas)
    if errors:
        metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason="UnloadFailed").inc()
        message = "; ".join(f"{r}: {e}" for r, e in errors.items())
        raise kopf.TemporaryError(f"could not unload from {message}", delay=retry_delay(retry))
    kopf.info(
        body, reason="Unloaded", message=f"unloaded {model.entry} from {len(replicas)} replica(s)"
    )


async def _reconcile(
    *,
    allow_evict: bool,
    raise_for_retry: bool,
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    inferencemodel_by_pool: kopf.Index,
    inferencemodel_router_use: kopf.Index | None = None,
    retry: int = 0,
    stopped: kopf.DaemonStopped | None = None,
    **_: Any,
) -> None:
    generation = meta.get("generation")
    conditions = list(status.get("conditions") or [])
    desired: dict[str, Any] = {"observedGeneration": generation}
    try:
        model = model_spec(name, namespace, dict(spec))
        pool_body, pool = await _resolve_pool(memo.kube, model)
        desired["pool"] = pool.name
        memory = _memory_of(model, pool)
        desired["memoryBytes"] = memory
        if memory > pool.memory_per_replica:
            raise Unplaceable(
                "TooLarge",
                f"{model.entry} needs {format_size(memory)} but pool {pool.name} gives each "
                f"replica {format_size(pool.memory_per_replica)}: raise the pool's "
                "spec.memoryPerReplica, choose a pool with more memory, or export a smaller "
                "variant (shorter max length, fp16/int8)",
            )
    except (SpecError, Unplaceable) as exc:
        reason = exc.reason if isinstance(exc, Unplaceable) else "InvalidSpec"
        phase = exc.phase if isinstance(exc, Unplaceable) else "Failed"
        _report_invalid(
            body, patch, status, desired, conditions, generation, reason, str(exc), phase
        )
        return
    conditions = set_condition(
        conditions, "Valid", True, "Valid", "spec, pool and memory are valid", generation
    )
    replicas = replicas_from_endpoints(await memo.kube.get_endpoints(namespace, pool.name))
    known = _with_memory(
        {k.entry: k for k in inferencemodel_by_pool.get((namespace, pool.name), [])}, pool
    )
    known = with_router_use(known, namespace, inferencemodel_router_use)
    me = _known(model, memory, meta.get("uid"))
    known[model.entry] = me
    wanted = min(model.min_replicas, len(replicas))
    if status.get("phase") in (None, "Pending", "Failed") and wanted > 0 and allow_evict:
        await _mark_loading(memo.kube, namespace, name)
    # The drift timer's stop flag is set when the model is being deleted (before the delete
    # handler runs): a drift run that was in flight must then neither load nor write status.
    is_stopped = (lambda: stopped.is_set()) if stopped is not None else None
    result = await memo.placer.place(
        me, memory, model.min_replicas, replicas, pool.memory_per_replica, known, allow_evict,
        stopped=is_stopped,
        repository=Path(pool.local_repository) if pool.local_repository else None,
    )  # fmt: skip
    if is_stopped is not None and is_stopped():
        return
    _announce_evictions(body, result, known)
    log.debug(
        "%s/%s placed (evict=%s): loaded on %s, blocked: %s",
        namespace, name, allow_evict, result.loaded_on, result.blocked or "-",
    )  # fmt: skip
    loaded = len(result.loaded_on)
    desired.update(
        {
            "replicas": result.loaded_on,
            "loadedReplicas": loaded,
            "lastUsed": result.last_used.strftime("%Y-%m-%dT%H:%M:%SZ")
            if result.last_used
            else None,
        }
    )
    desired = {k: v for k, v in desired.items() if v is not None}
    retry_message = ""
    if loaded >= model.min_replicas or (loaded >= wanted and replicas):
        desired["phase"] = "Ready"
        conditions = set_condition(
            conditions, "Loaded", True, "Loaded",
            f"loaded on {loaded} replica(s): {', '.join(result.loaded_on) or '-'}", generation,
        )  # fmt: skip
    elif result.invalid_entry:
        desired["phase"] = "Failed" if loaded == 0 else "Ready"
        desired["lastError"] = result.invalid_entry
        conditions = set_condition(
            conditions, "Loaded", False, "EntryInvalid", result.invalid_entry, generation
        )
        previous = get_condition(list(status.get("conditions") or []), "Loaded") or {}
        if previous.get("reason") != "EntryInvalid":  # warn once, not at every retry
            kopf.warn(body, reason="EntryInvalid", message=result.invalid_entry)
        retry_message = result.invalid_entry
    elif result.timed_out:
        desired["phase"] = "Failed" if loaded == 0 else "Ready"
        message = "; ".join(sorted(result.timed_out.values()))
        desired["lastError"] = message
        conditions = set_condition(conditions, "Loaded", False, "LoadTimeout", message, generation)
        metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason="LoadTimeout").inc()
        retry_message = message
    elif result.load_errors:
        triton_error = "; ".join(f"{r}: {e}" for r, e in sorted(result.load_errors.items()))
        desired["phase"] = "Failed" if loaded == 0 else "Ready"
        desired["lastError"] = triton_error
        message = (
            f"Triton failed to load {model.entry}: {triton_error}. Check the entry in the pool's "
            "model repository (shoal repo check); the operator retries with backoff"
        )
        conditions = set_condition(conditions, "Loaded", False, "LoadFailed", message, generation)
        kopf.warn(body, reason="LoadFailed", message=message)
        metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason="LoadFailed").inc()
        retry_message = message
    elif result.unreachable and len(result.unreachable) == len(replicas):
        desired["phase"] = "Pending" if loaded == 0 else "Ready"
        message = "no replica answered: " + "; ".join(
            f"{r}: {e}" for r, e in result.unreachable.items()
        )
        conditions = set_condition(
            conditions, "Loaded", False, "ReplicaUnreachable", message, generation
        )
        metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason="ReplicaUnreachable").inc()
        retry_message = message
    else:
        was_loaded = bool(status.get("loadedReplicas"))
        evicted = was_loaded and loaded == 0 and not allow_evict
        reason = "Evicted" if evicted or status.get("phase") == "Evicted" else "NoCapacity"
        if not replicas:
            reason = "NoReplicas"
        desired["phase"] = "Ready" if loaded else ("Evicted" if reason == "Evicted" else "Pending")
        message = f"loaded on {loaded} of {wanted or model.min_replicas} wanted replica(s): {result.blocked}"
        conditions = set_condition(
            conditions, "Loaded", loaded > 0 and not result.blocked, reason, message, generation
        )
        if allow_evict:
            retry_message = message
    ready = desired.get("phase") == "Ready"
    conditions = set_condition(
        conditions, "Ready", ready, "Ready" if ready else "NotReady",
        get_condition(conditions, "Loaded")["message"], generation,
    )  # fmt: skip
    if desired.get("phase") == "Ready" and status.get("lastError") and not result.load_errors:
        desired["lastError"] = None  # merge patch: removes the field
    desired["conditions"] = conditions
    _write(patch, status, desired)
    if retry_message and raise_for_retry:
        raise kopf.TemporaryError(retry_message, delay=retry_delay(retry))


async def _resolve_pool(kube: Any, model: ModelSpec) -> tuple[dict[str, Any], PoolSpec]:
    namespace = model.namespace
    if model.pool:
        body = await kube.get_pool(namespace, model.pool)
        if body is None:
            raise Unplaceable(
                "PoolNotFound",
                f"InferencePool {model.pool!r} not found in namespace {namespace!r}: create it, "
                "or set spec.pool to an existing pool",
                phase="Pending",
            )
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
        return body, pool_spec(body["metadata"]["name"], namespace, body["spec"])
    except SpecError as exc:
        raise Unplaceable(
            "PoolInvalid", f"InferencePool {body['metadata']['name']!r} is invalid: {exc}"
        ) from exc


def _memory_of(model: ModelSpec, pool: PoolSpec) -> int:
    if model.memory_override is not None:
        return model.memory_override
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


def _with_memory(known: dict[str, KnownModel], pool: PoolSpec) -> dict[str, KnownModel]:
    """Fill in the memory of models whose InferenceModel has not recorded it yet (created a
    moment ago) from their manifests: placement must never count a loaded model as free."""
    filled = {}
    for entry, info in known.items():
        if info.memory_bytes is None and pool.local_repository:
            try:
                memory = Manifest.read(Path(pool.local_repository) / entry).memory_bytes
                info = dataclasses.replace(info, memory_bytes=memory)
            except ManifestError as exc:
                log.warning("memory of %s unknown, counted as the whole budget: %s", entry, exc)
        if info.memory_bytes is None:
            info = dataclasses.replace(info, memory_bytes=pool.memory_per_replica)
        filled[entry] = info
    return filled


async def _mark_loading(kube: Any, namespace: str, name: str) -> None:
    """Show `Loading` while loads run (the handler's own patch lands only when it returns)."""
    try:
        await kube.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            MODEL_PLURAL,
            name,
            {"status": {"phase": "Loading"}},
            _content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        log.warning("could not mark %s/%s Loading: %s %s", namespace, name, exc.status, exc.reason)


def _announce_evictions(
    body: kopf.Body, result: PlacementResult, known: dict[str, KnownModel]
) -> None:
    for eviction in result.evictions:
        message = (
            f"evicted {eviction.entry} from replica {eviction.replica} to make room for "
            f"{eviction.for_entry} (least recently used)"
        )
        kopf.info(body, reason="Evicted", message=message)
        victim = known.get(eviction.entry)
        if victim is not None and victim.uid:
            ref = {
                "apiVersion": API_VERSION,
                "kind": MODEL_KIND,
                "metadata": {"name": victim.name, "namespace": victim.namespace, "uid": victim.uid},
            }
            kopf.info(ref, reason="Evicted", message=message)


def _report_invalid(
    body: kopf.Body,
    patch: kopf.Patch,
    status: kopf.Status,
    desired: dict[str, Any],
    conditions: list[dict[str, Any]],
    generation: int | None,
    reason: str,
    message: str,
    phase: str,
) -> None:
    previous = get_condition(conditions, "Valid")
    if previous is None or previous.get("message") != message:
        kopf.warn(body, reason=reason, message=message)
        metrics.RECONCILE_ERRORS.labels(kind=MODEL_KIND, reason=reason).inc()
    conditions = set_condition(conditions, "Valid", False, reason, message, generation)
    conditions = set_condition(conditions, "Ready", False, reason, message, generation)
    _write(patch, status, {**desired, "phase": phase, "conditions": conditions})


def _write(patch: kopf.Patch, status: kopf.Status, desired: dict[str, Any]) -> None:
    for key, value in status_changes(dict(status), desired).items():
        patch.status[key] = value
