"""The one source of shoal's CustomResourceDefinitions (`shoal.dev/v1alpha1`).

`shoal operator crds` prints them; `crds/*.yaml` in this package is generated from here
(`shoal operator crds --write`) and a test keeps both equal; the Helm chart copies those files.
Schemas are structural and valid on Kubernetes 1.20 (apiextensions v1, no CEL): what a schema can
express (types, enums, minimums, patterns, required, one-of) lives here, the rest (min <= max, a
pool that exists, a model that fits a replica) becomes a status condition set by the operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

GROUP = "shoal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

POOL_KIND, POOL_PLURAL, POOL_SINGULAR = "InferencePool", "inferencepools", "inferencepool"
MODEL_KIND, MODEL_PLURAL, MODEL_SINGULAR = "InferenceModel", "inferencemodels", "inferencemodel"

CRD_DIR = Path(__file__).parent / "crds"

# A Kubernetes quantity ("16Gi", "1500M", "2e9") or a plain integer number of bytes.
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
# A memory size the status (a 64-bit integer) can hold: the integer digits allowed shrink as the
# unit grows, so that the largest value stays below 2**63 bytes (999Pi is about 1.1e18).
_FRACTION = r"(\.[0-9]{1,6})?"
MEMORY_PATTERN = (
    r"^\+?("
    r"[0-9]{1,18}"
    rf"|[0-9]{{1,15}}{_FRACTION}(k|Ki)"
    rf"|[0-9]{{1,12}}{_FRACTION}(M|Mi)"
    rf"|[0-9]{{1,9}}{_FRACTION}(G|Gi)"
    rf"|[0-9]{{1,6}}{_FRACTION}(T|Ti)"
    rf"|[0-9]{{1,3}}{_FRACTION}(P|Pi)"
    rf"|[0-9]{{1,3}}{_FRACTION}[eE]\+?[0-9]{{1,2}}"
    r")$"
)
# The API server holds a schema's `maximum` as a float64: 2**63 - 1 rounds up to 2**63, which
# overflows to -2**63 when compared with an integer and refuses every value. 2**53 (8 PiB) is
# exact in a float64 and far above any replica's memory.
MAX_MEMORY_BYTES = 2**53
# Bounds that keep every count within what Deployments (int32 replicas), KEDA and the status
# hold, and far above any real pool: a value beyond them is a typing mistake.
MAX_REPLICAS = 1000
MAX_GPUS = 64
MAX_DELAY_SECONDS = 7 * 24 * 3600
MAX_PRIORITY = 1_000_000
MAX_ENTRY_LENGTH = 200
LABEL_VALUE_LENGTH = 63
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
TRITON_MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
REPOSITORY_URI_PATTERN = r"^(s3|gs)://.+"


def _quantity(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "pattern": QUANTITY_PATTERN,
    }


def _memory(description: str) -> dict[str, Any]:
    """A memory size, bounded so that its byte count fits the 64-bit status fields (the 1e18
    exponent form aside, the pattern already bounds it; the operator checks the rest)."""
    return {
        "description": description + " At most about 1 EiB (999Pi).",
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "pattern": MEMORY_PATTERN,
        "minimum": 1,
        "maximum": MAX_MEMORY_BYTES,
    }


def _count(
    description: str, minimum: int, maximum: int, default: int | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": description,
    }
    if default is not None:
        schema["default"] = default
    return schema


def _opaque(description: str, type_: str = "object") -> dict[str, Any]:
    """A field passed through to Kubernetes as is (its own API validates it)."""
    return {"type": type_, "description": description, "x-kubernetes-preserve-unknown-fields": True}


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }


def _common_status() -> dict[str, Any]:
    return {
        "observedGeneration": {"type": "integer"},
        "conditions": {"type": "array", "items": _condition_schema()},
        # kopf keeps its own progress notes here; they must survive status patches.
        "kopf": _opaque("operator bookkeeping"),
    }


POOL_PHASES = ["Pending", "Ready", "Degraded", "Failed"]
MODEL_PHASES = ["Pending", "Loading", "Ready", "Evicted", "Failed"]


def _pool_spec_schema() -> dict[str, Any]:
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    resource_map = {"type": "object", "additionalProperties": _quantity("a resource quantity")}
    return {
        "type": "object",
        "required": ["triton", "storage", "memoryPerReplica"],
        "properties": {
            "gpuClass": {
                "type": "string",
                "description": "Name of the GPU class this pool provides; models may select "
                "a pool by it instead of by name.",
                "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                "maxLength": LABEL_VALUE_LENGTH,
            },
            "gpus": _count("nvidia.com/gpu per replica (0 or absent: a CPU pool).", 0, MAX_GPUS),
            "nodeSelector": {**string_map, "description": "Node labels of the GPU class."},
            "tolerations": {"type": "array", "items": _opaque("a core/v1 Toleration")},
            "affinity": _opaque("a core/v1 Affinity"),
            "resources": {
                "type": "object",
                "description": "Triton container requests and limits.",
                "properties": {"requests": resource_map, "limits": resource_map},
            },
            "triton": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "minLength": 1},
                    "imagePullPolicy": {
                        "type": "string",
                        "enum": ["Always", "IfNotPresent", "Never"],
                    },
                    "args": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Extra tritonserver arguments (the operator sets the "
                        "repository, explicit model control and ports).",
                    },
                    "env": {"type": "array", "items": _opaque("a core/v1 EnvVar")},
                },
            },
            "storage": {
                "type": "object",
                "description": "Where Triton reads the model repository: a PVC, or an "
                "s3:// / gs:// repository Triton reads itself.",
                "oneOf": [{"required": ["pvc"]}, {"required": ["uri"]}],
                "properties": {
                    "pvc": {
                        "type": "object",
                        "required": ["claimName"],
                        "properties": {
                            "claimName": {"type": "string", "minLength": 1},
                            "subPath": {"type": "string"},
                        },
                    },
                    "uri": {"type": "string", "pattern": REPOSITORY_URI_PATTERN},
                    "mountPath": {
                        "type": "string",
                        "pattern": r"^/.*",
                        "description": "Where the PVC is mounted in the Triton container "
                        "(default /models).",
                    },
                    "localPath": {
                        "type": "string",
                        "description": "Where the operator itself can read the same "
                        "repository (for manifests); absent: models must set spec.memory.",
                    },
                },
            },
            "replicas": {
                "type": "object",
                "properties": {
                    "min": _count("Replicas kept when idle.", 0, MAX_REPLICAS, 1),
                    "max": _count("Replicas at most (KEDA scales up to it).", 1, MAX_REPLICAS, 1),
                },
                "default": {},
            },
            "memoryPerReplica": _memory(
                "Memory budget for models on one replica (GPU memory on GPU pools)."
            ),
            "scaleDownDelaySeconds": _count(
                "Seconds of no demand before the scaler removes replicas (KEDA cooldownPeriod "
                "for the last one, HPA scale-down window for the others).",
                0,
                MAX_DELAY_SECONDS,
                300,
            ),  # fmt: skip
            "autoscaling": {
                "type": "object",
                "description": "KEDA scaling between replicas.min and replicas.max on pending "
                "demand (a pool with min < max; needs KEDA in the cluster, and Prometheus or "
                "the shoal router as the demand source).",
                "required": ["threshold"],
                "properties": {
                    "routerScalerAddress": {
                        "type": "string",
                        "pattern": r"^[^/\s]+:[0-9]+$",
                        "description": "The shoal router's KEDA external scaler (host:port), "
                        "e.g. shoal-router.shoal-system:8003: requests held at the router wake "
                        "the pool from zero (default: the operator's "
                        "SHOAL_OPERATOR_ROUTER_SCALER setting).",
                    },
                    "prometheusAddress": {
                        "type": "string",
                        "pattern": r"^https?://.+",
                        "description": "The Prometheus server KEDA queries, e.g. "
                        "http://prometheus-operated.monitoring:9090 (optional with a router).",
                    },
                    "query": {
                        "type": "string",
                        "minLength": 1,
                        "description": "PromQL giving the pool's demand (default: Triton's "
                        "nv_inference_pending_request_count summed over the pool's Service).",
                    },
                    "threshold": {
                        "type": "number",
                        "minimum": 0,
                        "exclusiveMinimum": True,
                        "maximum": 1_000_000,
                        "description": "Target demand per replica (queued requests; at the "
                        "router: held and in-flight requests).",
                    },
                },
            },
            "maxUnavailable": _count(
                "PodDisruptionBudget: replicas that may be down at once.", 0, MAX_REPLICAS, 1
            ),
        },
    }


def _model_spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "oneOf": [{"required": ["pool"]}, {"required": ["gpuClass"]}],
        "properties": {
            "pool": {
                "type": "string",
                "description": "InferencePool name (same namespace).",
                "pattern": DNS_1035_LABEL_PATTERN,
                "maxLength": LABEL_VALUE_LENGTH,
            },
            "gpuClass": {
                "type": "string",
                "description": "Any pool of this GPU class (same namespace).",
                "maxLength": LABEL_VALUE_LENGTH,
            },
            "entry": {
                "type": "string",
                "pattern": TRITON_MODEL_NAME_PATTERN,
                "maxLength": MAX_ENTRY_LENGTH,
                "description": "The repository entry (Triton ensemble name) in the pool's "
                "model repository; default: metadata.name.",
            },
            "memory": _memory("Memory the model needs on a replica; default: its manifest."),
            "pinned": {"type": "boolean", "default": False, "description": "Never evicted."},
            "priority": _count(
                "Eviction only removes models of this priority or lower.",
                -MAX_PRIORITY,
                MAX_PRIORITY,
                0,
            ),  # fmt: skip
            "minReplicas": _count("Replicas that keep the model loaded.", 0, MAX_REPLICAS, 1),
            "maxHoldSeconds": _count(
                "How long the router holds a request while the model is not ready (loading, "
                "or its pool at zero replicas) when the client sends no timeout (default 60).",
                1,
                3600,
            ),
        },
    }


def _crd(
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["shoal"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "spec": spec,
                                "status": {"type": "object", "properties": status},
                            },
                        }
                    },
                }
            ],
        },
    }


def pool_crd() -> dict[str, Any]:
    status = {
        **_common_status(),
        "phase": {"type": "string", "enum": POOL_PHASES},
        "replicas": {"type": "integer", "description": "Ready Triton replicas (endpoints)."},
        "memoryPerReplicaBytes": {"type": "integer"},
        "deployment": {"type": "string"},
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "GPU class", "type": "string", "jsonPath": ".spec.gpuClass"},
        {"name": "Min", "type": "integer", "jsonPath": ".spec.replicas.min"},
        {"name": "Max", "type": "integer", "jsonPath": ".spec.replicas.max"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Memory", "type": "string", "jsonPath": ".spec.memoryPerReplica"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        POOL_KIND, POOL_PLURAL, POOL_SINGULAR, ["ipool"], _pool_spec_schema(), status, columns
    )


def model_crd() -> dict[str, Any]:
    status = {
        **_common_status(),
        "phase": {"type": "string", "enum": MODEL_PHASES},
        "pool": {"type": "string", "description": "The pool the model is placed on."},
        "entry": {"type": "string", "description": "The entry loaded there."},
        "movedFrom": {
            "type": "object",
            "nullable": True,
            "description": "The pool and entry of a moved model's old copy, until it is "
            "unloaded, and the replicas (pods) of that pool where it is READY meanwhile.",
            "properties": {
                "pool": {"type": "string"},
                "entry": {"type": "string"},
                "replicas": {"type": "array", "items": {"type": "string"}},
            },
        },
        "memoryBytes": {"type": "integer"},
        "loadedReplicas": {"type": "integer"},
        "replicas": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Replicas (pods) where the model is READY: the router routes by it.",
        },
        "replicaAddresses": {
            "type": "array",
            "description": "Where each of `replicas` answers: its pod, and host:port of Triton's "
            "HTTP and gRPC endpoints.",
            "items": {
                "type": "object",
                "properties": {
                    "pod": {"type": "string"},
                    "http": {"type": "string"},
                    "grpc": {"type": "string"},
                    "version": {"type": "string", "description": "The entry version it serves."},
                },
            },
        },
        "servedVersion": {
            "type": "string",
            "nullable": True,
            "description": "The entry version the replicas serve (the manifest's `version`); "
            'during a rollout the versions served, e.g. "1, 2".',
        },
        "lastUsed": {"type": "string", "format": "date-time", "nullable": True},
        "lastError": {
            "type": "string",
            "nullable": True,
            "description": "Triton's error from the last failed load.",
        },
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Pool", "type": "string", "jsonPath": ".status.pool"},
        {"name": "Loaded", "type": "integer", "jsonPath": ".status.loadedReplicas"},
        {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"},
        {"name": "Pinned", "type": "boolean", "jsonPath": ".spec.pinned"},
        {"name": "Last used", "type": "date", "jsonPath": ".status.lastUsed"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(
        MODEL_KIND, MODEL_PLURAL, MODEL_SINGULAR, ["imodel"], _model_spec_schema(), status, columns
    )


def shoal_crds() -> list[dict[str, Any]]:
    return [pool_crd(), model_crd()]


# kopf's peering resources: operators of one peering see each other, and only the one with the
# highest priority acts (shoal.operator.main gives the earliest started the highest).
PEERING_GROUP = "kopf.dev"
PEERING_NAME = "shoal"


def peering_crds() -> list[dict[str, Any]]:
    """The ClusterKopfPeering and KopfPeering CRDs kopf expects (as kopf's docs ship them)."""
    status = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{PEERING_GROUP}"},
            "spec": {
                "scope": scope,
                "group": PEERING_GROUP,
                "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {"status": status},
                            }
                        },
                    }
                ],
            },
        }
        for kind, plural, scope in (
            ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
            ("KopfPeering", "kopfpeerings", "Namespaced"),
        )
    ]


def all_crds() -> list[dict[str, Any]]:
    """Every CRD the operator needs installed: shoal's resources and kopf's peering."""
    return [*shoal_crds(), *peering_crds()]


HEADER = (
    "# Generated by `shoal operator crds --write` from src/shoal/operator/crds.py: do not edit.\n"
)


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def shipped_files() -> dict[Path, str]:
    """Each CRD file this package ships, with the text it must hold."""
    return {CRD_DIR / f"{crd['metadata']['name']}.yaml": render(crd) for crd in all_crds()}


def write_shipped_files() -> list[Path]:
    CRD_DIR.mkdir(exist_ok=True)
    written = []
    for path, text in shipped_files().items():
        path.write_text(text)
        written.append(path)
    return written
