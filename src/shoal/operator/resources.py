"""Pure builders of the Kubernetes objects an InferencePool owns: Deployment, Service, PDB, and
the KEDA ScaledObject of a pool that scales.

Called by the pool handlers (handlers.py), which create or update what these return. No I/O here,
so each manifest is unit-tested as data (tests/operator/test_resources.py).

Replicas and scalers: the Deployment gets `replicas` when it is created (the pool's minimum).
Afterwards the operator sets it only for a fixed-size pool (min == max); for a pool that scales
(min < max) the scaler (KEDA's ScaledObject / HPA) owns `replicas` and the operator leaves it as
found, only clamping a value outside [min, max].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.contract import TRITON_SERVING_FLAGS
from shoal.operator.settings import TRITON_ADMIN_HEADER, TRITON_ADMIN_SECRET
from shoal.operator.specs import PoolSpec

KEDA_GROUP, KEDA_VERSION, SCALED_OBJECT_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
# The HPA's scale-down stabilization window is capped at one hour by Kubernetes.
MAX_HPA_WINDOW_S = 3600

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
TRITON_CONTAINER = "triton"
POOL_LABEL = "shoal.dev/pool"
MANAGED_BY = {"app.kubernetes.io/managed-by": "shoal-operator"}
SHM_SIZE = "1Gi"  # python-backend steps exchange tensors through /dev/shm
ADMIN_KEY_VAR = "SHOAL_TRITON_ADMIN_KEY"
# NVIDIA's tritonserver images run as `triton-server` (uid 1000); a non-root user is required.
TRITON_UID = 1000


@dataclass(frozen=True)
class TritonAdmin:
    """Triton's repository API (load, unload, file uploads that run as python-backend code) is
    restricted to requests carrying `header`, whose value is key `key` of Secret `secret` in the
    pool's namespace. Only the operator holds that value; the router drops the header."""

    header: str
    secret: str
    key: str = "key"


def triton_admin_from_settings() -> TritonAdmin | None:
    if TRITON_ADMIN_SECRET is None:
        return None
    return TritonAdmin(header=TRITON_ADMIN_HEADER, secret=TRITON_ADMIN_SECRET)


def selector_labels(pool: PoolSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "shoal-triton", POOL_LABEL: pool.name}


def common_labels(pool: PoolSpec) -> dict[str, str]:
    return {**selector_labels(pool), "app.kubernetes.io/instance": pool.name, **MANAGED_BY}


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to a custom resource body (apiVersion, kind, metadata.name/uid)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: PoolSpec, owner: dict[str, Any] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": pool.name,
        "namespace": pool.namespace,
        "labels": common_labels(pool),
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return metadata


def restricted_api_args(admin: TritonAdmin) -> list[str]:
    """Kubernetes expands `$(VAR)` in args from the container's env (the Secret's value), so the
    key is in no manifest."""
    restriction = f"model-repository:{admin.header}=$({ADMIN_KEY_VAR})"
    return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]


def triton_args(pool: PoolSpec, admin: TritonAdmin | None = None) -> list[str]:
    restricted = restricted_api_args(admin) if admin is not None else []
    return [
        f"--model-repository={pool.triton_repository}",
        "--model-control-mode=explicit",  # the operator loads and unloads every model
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--exit-on-error=false",  # one bad entry must not take the replica down
        # Ready means "answers": a model that failed to load must not pull the replica out of
        # the Service (the operator reports it on the InferenceModel instead).
        "--strict-readiness=false",
        *TRITON_SERVING_FLAGS,
        *restricted,
        *pool.args,
    ]


def _resources(pool: PoolSpec) -> dict[str, Any]:
    limits = dict(pool.limits)
    requests = dict(pool.requests)
    if pool.gpus:
        limits["nvidia.com/gpu"] = pool.gpus
        requests.setdefault("nvidia.com/gpu", pool.gpus)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": TRITON_UID,
        "runAsGroup": TRITON_UID,
        "fsGroup": TRITON_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(pool: PoolSpec, admin: TritonAdmin | None) -> list[dict[str, Any]]:
    env = [dict(e) for e in pool.env]
    if admin is not None:
        secret_ref = {"name": admin.secret, "key": admin.key}
        env.append({"name": ADMIN_KEY_VAR, "valueFrom": {"secretKeyRef": secret_ref}})
    return env


def build_pod_template(pool: PoolSpec, admin: TritonAdmin | None = None) -> dict[str, Any]:
    """The Triton pod: non-root, read-only root filesystem (emptyDirs for /tmp and /dev/shm), no
    capabilities, no service-account token (Triton never calls the Kubernetes API)."""
    container: dict[str, Any] = {
        "name": TRITON_CONTAINER,
        "image": pool.image,
        "command": ["tritonserver"],
        "args": triton_args(pool, admin),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _probe("/v2/health/ready", period_s=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period_s=10, failures=3),
        # Triton reads the repository index before it answers; give a slow volume time.
        "startupProbe": _probe("/v2/health/live", period_s=5, failures=60),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _container_security(),
    }
    if pool.image_pull_policy:
        container["imagePullPolicy"] = pool.image_pull_policy
    env = _env(pool, admin)
    if env:
        container["env"] = env
    resources = _resources(pool)
    if resources:
        container["resources"] = resources
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if pool.pvc_claim:
        mount: dict[str, Any] = {"name": "models", "mountPath": pool.mount_path, "readOnly": True}
        if pool.pvc_sub_path:
            mount["subPath"] = pool.pvc_sub_path
        container["volumeMounts"].append(mount)
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": pool.pvc_claim, "readOnly": True},
            }
        )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
    }
    if pool.node_selector:
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pool.tolerations]
    if pool.affinity:
        pod_spec["affinity"] = pool.affinity
    return {"metadata": {"labels": common_labels(pool)}, "spec": pod_spec}


def desired_replicas(pool: PoolSpec, current: int | None) -> int:
    """What `spec.replicas` should be, given what the Deployment has now (None: creating it)."""
    if current is None or pool.fixed_size:
        return pool.min_replicas
    return min(max(current, pool.min_replicas), pool.max_replicas)


def build_deployment(
    pool: PoolSpec,
    owner: dict[str, Any] | None = None,
    current_replicas: int | None = None,
    admin: TritonAdmin | None = None,
) -> dict[str, Any]:
    """`admin`: the restricted repository API; the handlers pass triton_admin_from_settings()."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool, owner),
        "spec": {
            "replicas": desired_replicas(pool, current_replicas),
            "selector": {"matchLabels": selector_labels(pool)},
            # A new replica must be ready (its models reloaded by the operator) before an
            # old one goes: surge one, never drop below the current count.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": build_pod_template(pool, admin),
        },
    }


def build_service(pool: PoolSpec, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool, owner),
        "spec": {
            "selector": selector_labels(pool),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def build_pdb(
    pool: PoolSpec, owner: dict[str, Any] | None = None, api_version: str = "policy/v1"
) -> dict[str, Any]:
    """`policy/v1` from Kubernetes 1.21; pass `policy/v1beta1` for older servers."""
    return {
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pool, owner),
        "spec": {
            "maxUnavailable": pool.max_unavailable,
            "selector": {"matchLabels": selector_labels(pool)},
        },
    }


def demand_query(pool: PoolSpec) -> str:
    """The default PromQL for a pool's demand: requests queued in Triton on all its replicas.

    Why this metric: a Triton replica's queue (`nv_inference_pending_request_count`: requests
    received and not yet executing, per model) is the work it cannot keep up with. GPU
    utilization says little for small encoders (a replica can be saturated by python steps at low
    GPU use) and request rate ignores how fast a replica drains it; a queue that grows is the
    direct signal that another replica would cut latency, and an empty one for
    `scaleDownDelaySeconds` that one can go. `or vector(0)` makes "no replica reports" read as no
    demand instead of an error. Labels are those the Prometheus Operator gives a Service's
    targets (namespace, service); set spec.autoscaling.query for other scrape setups, or a
    demand signal that exists with zero replicas (queued at a router) to scale up from zero."""
    return (
        "sum(nv_inference_pending_request_count"
        f'{{namespace="{pool.namespace}",service="{pool.name}"}}) or vector(0)'
    )


# The router's demand per replica a pool aims at when its spec gives no threshold.
DEFAULT_ROUTER_TARGET = 4.0


def router_scaler_address(pool: PoolSpec, default: str | None) -> str | None:
    """The router's KEDA scaler for this pool: the pool's own, else the operator's setting."""
    own = pool.autoscaling.router_scaler_address if pool.autoscaling else None
    return own or default


def scaled_object_triggers(
    pool: PoolSpec, router_scaler: str | None = None
) -> list[dict[str, Any]]:
    """KEDA triggers of the pool: `external-push` to the router's scaler (requests held at the
    router wake a pool at zero within a second; shoal.router.keda_scaler) and/or `prometheus`
    (Triton's queues). KEDA activates on either and the HPA follows the larger."""
    autoscaling = pool.autoscaling
    threshold = autoscaling.threshold if autoscaling else DEFAULT_ROUTER_TARGET
    triggers: list[dict[str, Any]] = []
    address = router_scaler_address(pool, router_scaler)
    if address:
        triggers.append(
            {
                "type": "external-push",
                # KEDA reads trigger metadata as strings; the scaler reads pool and targetSize.
                "metadata": {
                    "scalerAddress": address,
                    "pool": pool.name,
                    "targetSize": f"{threshold:g}",
                },
            }
        )
    if autoscaling and autoscaling.prometheus_address:
        triggers.append(
            {
                "type": "prometheus",
                "metadata": {
                    "serverAddress": autoscaling.prometheus_address,
                    "query": autoscaling.query or demand_query(pool),
                    "threshold": f"{threshold:g}",
                },
            }
        )
    return triggers


def wants_scaled_object(pool: PoolSpec, router_scaler: str | None = None) -> bool:
    """A pool that scales (min < max) and has a demand source (spec.autoscaling, or a router)."""
    return not pool.fixed_size and bool(scaled_object_triggers(pool, router_scaler))


def build_scaled_object(
    pool: PoolSpec, owner: dict[str, Any] | None = None, router_scaler: str | None = None
) -> dict[str, Any]:
    """The KEDA ScaledObject that scales the pool's Deployment between replicas.min and max.

    minReplicaCount may be 0: KEDA then scales to zero after `cooldownPeriod` without demand and
    back to one when a trigger reports some (KEDA's activation; idleReplicaCount must be below
    minReplicaCount, so it has no use here). Between 1 and max, KEDA's HPA scales on the
    triggers' value per replica against the threshold; the HPA's scale-down window takes the
    same delay, so `scaleDownDelaySeconds` governs every step down. `router_scaler` is the
    operator's default router scaler address (a pool's spec.autoscaling may name its own)."""
    triggers = scaled_object_triggers(pool, router_scaler)
    if not triggers:
        raise ValueError(
            f"pool {pool.name} has no spec.autoscaling with a demand source and no router scaler"
        )
    window = min(pool.scale_down_delay_s, MAX_HPA_WINDOW_S)
    return {
        "apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}",
        "kind": "ScaledObject",
        "metadata": _metadata(pool, owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": pool.name},
            "minReplicaCount": pool.min_replicas,
            "maxReplicaCount": pool.max_replicas,
            "cooldownPeriod": pool.scale_down_delay_s,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": window}}
                }
            },
            "triggers": triggers,
        },
    }
