"""Typed views of the InferencePool and InferenceModel specs, with the checks a schema cannot do.

Called by the handlers (handlers.py) and the manifest builders (resources.py). Pure: no I/O.
A `SpecError` message says which field is wrong and what to do; the handlers put it in a status
condition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shoal.sizes import SizeError, parse_size

DEFAULT_MOUNT_PATH = "/models"


class SpecError(ValueError):
    """A spec the operator can never act on as written (a person must change it)."""


def _bytes(value: int | str, what: str) -> int:
    try:
        return parse_size(value, what)
    except SizeError as exc:
        raise SpecError(str(exc)) from None


@dataclass(frozen=True)
class Autoscaling:
    """spec.autoscaling: where the pool's KEDA ScaledObject reads demand (Prometheus, the
    router's KEDA scaler, or both) and the demand per replica it aims at."""

    prometheus_address: str | None
    threshold: float
    query: str | None = None  # None: the default demand query (resources.demand_query)
    # The router's KEDA scaler (host:port); None: the operator's setting, if any.
    router_scaler_address: str | None = None


@dataclass(frozen=True)
class PoolSpec:
    name: str
    namespace: str
    image: str
    memory_per_replica: int
    min_replicas: int = 1
    max_replicas: int = 1
    gpu_class: str | None = None
    gpus: int = 0
    image_pull_policy: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    requests: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    pvc_claim: str | None = None
    pvc_sub_path: str | None = None
    repository_uri: str | None = None
    mount_path: str = DEFAULT_MOUNT_PATH
    local_repository: str | None = None
    scale_down_delay_s: int = 300
    max_unavailable: int = 1
    autoscaling: Autoscaling | None = None

    @property
    def fixed_size(self) -> bool:
        """min == max: no scaler manages this pool, so the operator owns `replicas`."""
        return self.min_replicas == self.max_replicas

    @property
    def triton_repository(self) -> str:
        """The --model-repository Triton is started with."""
        return self.repository_uri or self.mount_path


# The pool's name is its Service's and Deployment's name and a label value: a DNS-1035 label.
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63


def check_pool_name(name: str) -> None:
    """What a CRD schema cannot say (metadata.name): the pool's children need a DNS-1035 label."""
    if len(name) > MAX_NAME_LENGTH or not _DNS_1035_LABEL.match(name):
        raise SpecError(
            f"pool name {name!r} cannot name the pool's Service, Deployment and labels: it must "
            f"be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, "
            f"at most {MAX_NAME_LENGTH} characters), e.g. "
            f"{_suggest_name(name)!r}; create the pool again under such a name"
        )


def _suggest_name(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    cleaned = cleaned if cleaned[:1].isalpha() else f"pool-{cleaned}"
    return cleaned[:MAX_NAME_LENGTH].rstrip("-") or "pool"


def pool_spec(name: str, namespace: str, spec: dict[str, Any]) -> PoolSpec:
    """Read an InferencePool spec (already defaulted and validated by the CRD schema)."""
    check_pool_name(name)
    triton = spec.get("triton") or {}
    storage = spec.get("storage") or {}
    replicas = spec.get("replicas") or {}
    resources = spec.get("resources") or {}
    min_replicas = int(replicas.get("min", 1))
    max_replicas = int(replicas.get("max", max(1, min_replicas)))
    if min_replicas > max_replicas:
        raise SpecError(
            f"spec.replicas.min ({min_replicas}) is greater than spec.replicas.max "
            f"({max_replicas}); raise max or lower min"
        )
    if not triton.get("image"):
        raise SpecError("spec.triton.image is empty; set a Triton Inference Server image")
    pvc = storage.get("pvc") or {}
    if bool(pvc) == bool(storage.get("uri")):
        raise SpecError("spec.storage needs exactly one of pvc (a PersistentVolumeClaim) or uri")
    memory = _bytes(spec.get("memoryPerReplica", 0), "spec.memoryPerReplica")
    if memory <= 0:
        raise SpecError("spec.memoryPerReplica must be positive, e.g. '16Gi'")
    autoscaling = _autoscaling(spec.get("autoscaling"))
    return PoolSpec(
        name=name,
        namespace=namespace,
        image=triton["image"],
        memory_per_replica=memory,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        gpu_class=spec.get("gpuClass"),
        gpus=int(spec.get("gpus") or 0),
        image_pull_policy=triton.get("imagePullPolicy"),
        args=tuple(triton.get("args") or ()),
        env=tuple(triton.get("env") or ()),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=tuple(spec.get("tolerations") or ()),
        affinity=spec.get("affinity"),
        requests=dict(resources.get("requests") or {}),
        limits=dict(resources.get("limits") or {}),
        pvc_claim=pvc.get("claimName"),
        pvc_sub_path=pvc.get("subPath"),
        repository_uri=storage.get("uri"),
        mount_path=storage.get("mountPath") or DEFAULT_MOUNT_PATH,
        local_repository=storage.get("localPath"),
        scale_down_delay_s=int(spec.get("scaleDownDelaySeconds", 300)),
        max_unavailable=int(spec.get("maxUnavailable", 1)),
        autoscaling=autoscaling,
    )


def _autoscaling(raw: dict[str, Any] | None) -> Autoscaling | None:
    if not raw:
        return None
    address = raw.get("prometheusAddress") or None
    router = raw.get("routerScalerAddress") or None
    if raw.get("query") and not address:
        raise SpecError(
            "spec.autoscaling.prometheusAddress is missing: spec.autoscaling.query needs the "
            "Prometheus server KEDA should query, e.g. http://prometheus-operated.monitoring:9090"
        )
    threshold = float(raw.get("threshold") or 0)
    if threshold <= 0:
        raise SpecError(
            "spec.autoscaling.threshold must be positive: the queued requests per replica "
            "to scale at, e.g. 4"
        )
    return Autoscaling(address, threshold, raw.get("query") or None, router)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the InferenceModel's metadata.name
    namespace: str
    entry: str  # Triton ensemble name in the pool's repository
    pool: str | None
    gpu_class: str | None
    memory_override: int | None
    pinned: bool = False
    priority: int = 0
    min_replicas: int = 1


def model_spec(name: str, namespace: str, spec: dict[str, Any]) -> ModelSpec:
    pool, gpu_class = spec.get("pool"), spec.get("gpuClass")
    if not pool and not gpu_class:
        raise SpecError("set spec.pool (an InferencePool name) or spec.gpuClass")
    memory = spec.get("memory")
    memory_bytes = _bytes(memory, "spec.memory") if memory is not None else None
    if memory_bytes is not None and memory_bytes <= 0:
        raise SpecError("spec.memory must be positive, e.g. '512Mi'")
    return ModelSpec(
        name=name,
        namespace=namespace,
        entry=spec.get("entry") or name,
        pool=pool,
        gpu_class=gpu_class,
        memory_override=memory_bytes,
        pinned=bool(spec.get("pinned", False)),
        priority=int(spec.get("priority", 0)),
        min_replicas=int(spec.get("minReplicas", 1)),
    )
