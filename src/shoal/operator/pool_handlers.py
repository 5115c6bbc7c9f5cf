"""InferencePool handlers: the pool's Deployment, Service, PodDisruptionBudget and KEDA
ScaledObject, and its status.

Registered with kopf by importing shoal.operator.handlers. Handlers are named `<kind>_<event>`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from shoal.operator import metrics
from shoal.operator.conditions import get_condition, set_condition, status_changes
from shoal.operator.crds import GROUP, POOL_PLURAL, VERSION
from shoal.operator.replicas import replicas_from_endpoints
from shoal.operator.resources import (
    build_deployment,
    build_pdb,
    build_scaled_object,
    build_service,
    desired_replicas,
    triton_admin_from_settings,
    wants_scaled_object,
)
from shoal.operator.settings import POOL_STATUS_INTERVAL_S, ROUTER_SCALER_ADDRESS, retry_delay
from shoal.operator.specs import PoolSpec, SpecError, pool_spec

POOL = (GROUP, VERSION, POOL_PLURAL)


@kopf.on.resume(*POOL)
@kopf.on.create(*POOL)
@kopf.on.update(*POOL, field="spec")
async def inferencepool_apply(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    logger: logging.Logger,
    **_: Any,
) -> None:
    """Create or roll out the pool's Deployment, Service and PDB."""
    generation = meta.get("generation")
    conditions = list(status.get("conditions") or [])
    try:
        pool = pool_spec(name, namespace, dict(spec))
    except SpecError as exc:
        metrics.RECONCILE_ERRORS.labels(kind="InferencePool", reason="InvalidSpec").inc()
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        _write(patch, status, {
            "phase": "Failed",
            "observedGeneration": generation,
            "conditions": set_condition(conditions, "Valid", False, "InvalidSpec", str(exc), generation),
        })  # fmt: skip
        return
    kube = memo.kube
    owner = dict(body)
    try:
        pdb_version = await kube.pdb_api_version()
        deployment = await kube.apply_deployment(
            build_deployment(pool, owner, admin=triton_admin_from_settings()),
            lambda current: desired_replicas(pool, current),
        )
        service = await kube.apply_service(build_service(pool, owner))
        pdb = await kube.apply_pdb(build_pdb(pool, owner, api_version=pdb_version))
        autoscaling = await _apply_autoscaling(kube, pool, owner)
    except ApiException as exc:
        metrics.RECONCILE_ERRORS.labels(kind="InferencePool", reason="ApiError").inc()
        message = (
            f"Kubernetes API refused a child of the pool: {exc.status} {exc.reason}: {exc.body}"
        )
        _write(patch, status, {
            "conditions": set_condition(conditions, "Applied", False, "ApiError", message, generation),
        })  # fmt: skip
        raise kopf.TemporaryError(message, delay=retry_delay(retry)) from exc
    for kind, outcome in (
        ("Deployment", deployment),
        ("Service", service),
        ("PodDisruptionBudget", pdb),
        ("ScaledObject", autoscaling.outcome),
    ):
        if outcome not in ("unchanged", ""):
            logger.info("%s %s %s", outcome.capitalize(), kind, name)
            kopf.info(body, reason=outcome.capitalize(), message=f"{outcome} {kind} {name}")
    conditions = set_condition(conditions, "Valid", True, "Valid", "spec is valid", generation)
    conditions = set_condition(
        conditions, "Applied", True, "Applied",
        f"Deployment, Service and PodDisruptionBudget {name} match generation {generation}",
        generation,
    )  # fmt: skip
    conditions = set_condition(
        conditions, "Autoscaling", autoscaling.ok, autoscaling.reason, autoscaling.message,
        generation,
    )  # fmt: skip
    if autoscaling.reason in ("KedaNotInstalled", "ScaledObjectConflict"):
        kopf.warn(body, reason=autoscaling.reason, message=autoscaling.message)
    _write(patch, status, {
        "observedGeneration": generation,
        "deployment": name,
        "memoryPerReplicaBytes": pool.memory_per_replica,
        "phase": status.get("phase") if status.get("phase") not in (None, "Failed") else "Pending",
        "conditions": conditions,
    })  # fmt: skip


@kopf.timer(*POOL, interval=POOL_STATUS_INTERVAL_S, initial_delay=1.0)
async def inferencepool_status(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Ready replicas (from the Service's Endpoints) and the phase they give the pool."""
    try:
        pool = pool_spec(name, namespace, dict(spec))
    except SpecError:
        return  # inferencepool_apply has reported it
    conditions = list(status.get("conditions") or [])
    autoscaling_condition = get_condition(conditions, "Autoscaling") or {}
    if autoscaling_condition.get("reason") == "KedaNotInstalled":
        # KEDA may have been installed since: create the ScaledObject without a spec change.
        try:
            autoscaling = await _apply_autoscaling(memo.kube, pool, dict(body))
        except ApiException as exc:
            autoscaling = AutoscalingOutcome(
                False, "KedaNotInstalled", autoscaling_condition.get("message", "")
            )
            logging.getLogger(__name__).warning("KEDA check for %s: %s", name, exc.reason)
        if autoscaling.reason != "KedaNotInstalled":
            logging.getLogger(__name__).info("KEDA now served: %s", autoscaling.message)
            conditions = set_condition(
                conditions, "Autoscaling", autoscaling.ok, autoscaling.reason, autoscaling.message,
                autoscaling_condition.get("observedGeneration"),
            )  # fmt: skip
    replicas = replicas_from_endpoints(await memo.kube.get_endpoints(namespace, name))
    ready = len(replicas)
    if ready >= max(pool.min_replicas, 1):
        phase, ok, reason = "Ready", True, "ReplicasReady"
    elif ready == 0 and pool.min_replicas == 0:
        phase, ok, reason = "Ready", True, "ScaledToZero"
    elif ready == 0:
        phase, ok, reason = "Pending", False, "NoReadyReplicas"
    else:
        phase, ok, reason = "Degraded", False, "TooFewReadyReplicas"
    message = f"{ready} ready replica(s), minimum {pool.min_replicas}"
    _write(patch, status, {
        "phase": phase,
        "replicas": ready,
        "conditions": set_condition(conditions, "Ready", ok, reason, message),
    })  # fmt: skip
    try:
        counts = await memo.placer.models_per_replica(replicas)
    except Exception as exc:  # metrics are best effort; never fail the status timer for them
        logging.getLogger(__name__).debug("models per replica of %s: %r", name, exc)
        return
    for replica, count in counts.items():
        metrics.MODELS_PER_REPLICA.labels(pool=f"{namespace}/{name}", replica=replica).set(count)


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


def _write(patch: kopf.Patch, status: kopf.Status, desired: dict[str, Any]) -> None:
    for key, value in status_changes(dict(status), desired).items():
        patch.status[key] = value
