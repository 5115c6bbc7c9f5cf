"""InferencePool handlers: the pool's Deployment, Service, PodDisruptionBudget and KEDA
ScaledObject, and its status.

Registered with kopf by importing shoal.operator.handlers. Handlers are named `<kind>_<event>`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.operator import metrics
from shoal.operator.conditions import get_condition, set_condition
from shoal.operator.crds import GROUP, POOL_PLURAL, VERSION
from shoal.operator.demand_annotations import with_router_use
from shoal.operator.evicted_status import withdraw_evicted
from shoal.operator.known_models import known_on_pool
from shoal.operator.kube import api_error, is_retriable
from shoal.operator.model_handlers import announce_evictions
from shoal.operator.outages import tolerates_api_outage
from shoal.operator.replicas import replicas_from_endpoints
from shoal.operator.resources import (
    build_deployment,
    build_pdb,
    build_scaled_object,
    build_service,
    desired_replicas,
    wants_scaled_object,
)
from shoal.operator.settings import POOL_STATUS_INTERVAL_S, ROUTER_SCALER_ADDRESS, retry_delay
from shoal.operator.specs import PoolSpec, SpecError, pool_spec

POOL = (GROUP, VERSION, POOL_PLURAL)
log = logging.getLogger(__name__)


@kopf.on.resume(*POOL)
@kopf.on.create(*POOL)
@kopf.on.update(*POOL, field="spec")
@tolerates_api_outage
async def inferencepool_apply(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    retry: int,
    **_: Any,
) -> None:
    """Create or roll out the pool's Deployment, Service and PDB. Owns the Valid, Applied and
    Autoscaling conditions (the status timer owns Ready)."""
    generation = meta.get("generation")
    kube = memo.kube
    try:
        pool = pool_spec(name, namespace, dict(spec))
    except SpecError as exc:
        await _refuse(kube, body, status, generation, "Valid", "InvalidSpec", str(exc))
        return
    owner = dict(body)
    try:
        pdb_version = await kube.pdb_api_version()
        deployment = await kube.apply_deployment(
            build_deployment(pool, owner), lambda current: desired_replicas(pool, current)
        )
        service = await kube.apply_service(build_service(pool, owner))
        pdb = await kube.apply_pdb(build_pdb(pool, owner, api_version=pdb_version))
        autoscaling = await _apply_autoscaling(kube, pool, owner)
    except ApiException as exc:
        message = f"the Kubernetes API refused a child of the pool: {api_error(exc)}"
        if not is_retriable(exc):  # the same request would be refused again: a person must act
            await _refuse(kube, body, status, generation, "Applied", "Rejected", message)
            return
        metrics.RECONCILE_ERRORS.labels(kind="InferencePool", reason="ApiError").inc()
        raise kopf.TemporaryError(message, delay=retry_delay(retry)) from None
    for kind, outcome in (
        ("Deployment", deployment),
        ("Service", service),
        ("PodDisruptionBudget", pdb),
        ("ScaledObject", autoscaling.outcome),
    ):
        if outcome not in ("unchanged", ""):
            log.info("%s %s %s/%s", outcome.capitalize(), kind, namespace, name)
            kopf.info(body, reason=outcome.capitalize(), message=f"{outcome} {kind} {name}")
    previous = get_condition(status.get("conditions"), "Autoscaling") or {}
    if autoscaling.reason in ("KedaNotInstalled", "ScaledObjectConflict") and (
        previous.get("reason") != autoscaling.reason
    ):
        kopf.warn(body, reason=autoscaling.reason, message=autoscaling.message)

    def owned(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        conditions = set_condition(conditions, "Valid", True, "Valid", "spec is valid", generation)
        conditions = set_condition(
            conditions, "Applied", True, "Applied",
            f"Deployment, Service and PodDisruptionBudget {name} match generation {generation}",
            generation,
        )  # fmt: skip
        return set_condition(
            conditions, "Autoscaling", autoscaling.ok, autoscaling.reason, autoscaling.message,
            generation,
        )  # fmt: skip

    fields = {
        "observedGeneration": generation,
        "deployment": name,
        "memoryPerReplicaBytes": pool.memory_per_replica,
    }
    if status.get("phase") in (None, "Failed"):
        fields["phase"] = "Pending"  # the status timer sets it from the ready replicas
    await kube.update_pool_status(namespace, name, fields, owned)


async def _refuse(
    kube: Any,
    body: kopf.Body,
    status: kopf.Status,
    generation: int | None,
    condition: str,
    reason: str,
    message: str,
) -> None:
    """A pool that cannot be applied as written: Failed, one condition, one Event (only when
    that changes), no retry: the next spec change tries again."""
    previous = get_condition(status.get("conditions"), condition) or {}
    if (previous.get("reason"), previous.get("observedGeneration")) != (reason, generation):
        kopf.warn(body, reason=reason, message=message)
        metrics.RECONCILE_ERRORS.labels(kind="InferencePool", reason=reason).inc()
    await kube.update_pool_status(
        body["metadata"]["namespace"],
        body["metadata"]["name"],
        {"phase": "Failed", "observedGeneration": generation},
        lambda conditions: set_condition(conditions, condition, False, reason, message, generation),
    )


@kopf.timer(*POOL, interval=POOL_STATUS_INTERVAL_S, initial_delay=1.0)
@tolerates_api_outage
async def inferencepool_status(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    status: kopf.Status,
    memo: kopf.Memo,
    inferencemodel_by_pool: kopf.Index,
    inferencemodel_router_use: kopf.Index | None = None,
    **_: Any,
) -> None:
    """Ready replicas (from the Service's Endpoints) and the phase they give the pool; the
    memory budget enforced on every replica. Owns the Ready condition."""
    try:
        pool = pool_spec(name, namespace, dict(spec))
    except SpecError:
        return  # inferencepool_apply has reported it
    if status.get("phase") == "Failed":
        return  # its children were refused: inferencepool_apply has reported it
    await _recheck_keda(memo.kube, pool, body, status)
    replicas = replicas_from_endpoints(await memo.kube.get_endpoints(namespace, name))
    phase, ok, reason = _phase(len(replicas), pool.min_replicas)
    message = f"{len(replicas)} ready replica(s), minimum {pool.min_replicas}"
    await memo.kube.update_pool_status(
        namespace, name, {"phase": phase, "replicas": len(replicas)},
        lambda conditions: set_condition(conditions, "Ready", ok, reason, message),
    )  # fmt: skip
    if replicas:
        await _enforce_budget(
            memo.kube, memo.placer, pool, replicas, inferencemodel_by_pool,
            inferencemodel_router_use,
        )  # fmt: skip
    try:
        counts = await memo.placer.models_per_replica(replicas)
    except Exception as exc:  # metrics are best effort; never fail the status timer for them
        log.debug("models per replica of %s: %r", name, exc)
        return
    for replica, count in counts.items():
        metrics.MODELS_PER_REPLICA.labels(pool=f"{namespace}/{name}", replica=replica).set(count)


def _phase(ready: int, min_replicas: int) -> tuple[str, bool, str]:
    if ready >= max(min_replicas, 1):
        return "Ready", True, "ReplicasReady"
    if ready == 0 and min_replicas == 0:
        return "Ready", True, "ScaledToZero"
    if ready == 0:
        return "Pending", False, "NoReadyReplicas"
    return "Degraded", False, "TooFewReadyReplicas"


async def _enforce_budget(
    kube: Any,
    placer: Any,
    pool: PoolSpec,
    replicas: list[Any],
    index: kopf.Index,
    router_use: kopf.Index | None = None,
) -> None:
    """A lowered memoryPerReplica is enforced: models beyond it are evicted by policy (never
    one a router holds requests for)."""
    known = known_on_pool(index.get((pool.namespace, pool.name), []), pool)
    known = with_router_use(known, pool.namespace, router_use)
    repository = Path(pool.local_repository) if pool.local_repository else None
    evictions = await placer.enforce_budget(replicas, pool.memory_per_replica, known, repository)
    announce_evictions(None, evictions, known)
    await withdraw_evicted(kube, evictions, known)


async def _recheck_keda(kube: Any, pool: PoolSpec, body: kopf.Body, status: kopf.Status) -> None:
    """KEDA may have been installed since the pool was applied: create the ScaledObject without
    waiting for a spec change."""
    condition = get_condition(status.get("conditions"), "Autoscaling") or {}
    if condition.get("reason") != "KedaNotInstalled":
        return
    try:
        autoscaling = await _apply_autoscaling(kube, pool, dict(body))
    except ApiException as exc:
        log.warning("KEDA check for %s: %s", pool.name, api_error(exc))
        return
    if autoscaling.reason == "KedaNotInstalled":
        return
    log.info("KEDA now served: %s", autoscaling.message)
    await kube.update_pool_status(
        pool.namespace, pool.name, {},
        lambda conditions: set_condition(
            conditions, "Autoscaling", autoscaling.ok, autoscaling.reason, autoscaling.message,
            condition.get("observedGeneration"),
        ),
    )  # fmt: skip


@dataclass(frozen=True)
class AutoscalingOutcome:
    ok: bool
    reason: str
    message: str
    outcome: str = ""  # created / updated / unchanged / deleted, for Events; "" = nothing done


async def _apply_autoscaling(
    kube: Any, pool: PoolSpec, owner: dict[str, Any]
) -> AutoscalingOutcome:
    """The pool's KEDA ScaledObject: created or updated where KEDA is served and the pool scales;
    removed (if it is ours) where the pool no longer asks for one. Without KEDA the Deployment
    keeps the replicas it has (min at creation): the operator never scales in KEDA's place."""
    uid = owner["metadata"]["uid"]
    if not wants_scaled_object(pool, ROUTER_SCALER_ADDRESS):
        deleted = await kube.delete_scaled_object(pool.namespace, pool.name, uid)
        if pool.fixed_size:
            reason = "FixedSize"
            message = f"replicas.min == replicas.max: the operator keeps {pool.min_replicas}"
        else:
            reason = "NotConfigured"
            message = (
                f"no spec.autoscaling: replicas stay where they are (min {pool.min_replicas} at "
                "creation); set spec.autoscaling (threshold, and prometheusAddress or "
                "routerScalerAddress) to scale between "
                f"{pool.min_replicas} and {pool.max_replicas} with KEDA"
            )
        return AutoscalingOutcome(False, reason, message, "deleted" if deleted else "")
    if not await kube.serves_scaled_objects():
        return AutoscalingOutcome(
            False,
            "KedaNotInstalled",
            "the cluster does not serve scaledobjects.keda.sh (KEDA is not installed): replicas "
            f"stay at {pool.min_replicas} (replicas.min); install KEDA (https://keda.sh) and the "
            "operator creates the ScaledObject",
        )
    outcome = await kube.apply_scaled_object(
        build_scaled_object(pool, owner, ROUTER_SCALER_ADDRESS)
    )
    if outcome == "conflict":
        return AutoscalingOutcome(
            False,
            "ScaledObjectConflict",
            f"a ScaledObject named {pool.name} exists and is not owned by this pool: delete it "
            "(the operator then creates its own) or rename the pool",
        )
    return AutoscalingOutcome(
        True,
        "ScaledObject",
        f"ScaledObject {pool.name} scales the Deployment between {pool.min_replicas} and "
        f"{pool.max_replicas} replicas",
        outcome,
    )
