"""The pool's Deployment, Service and PodDisruptionBudget, built as data."""

from __future__ import annotations

from shoal.operator.resources import (
    build_deployment,
    build_pdb,
    build_service,
    desired_replicas,
)
from shoal.operator.specs import pool_spec

OWNER = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "InferencePool",
    "metadata": {"name": "gpu-a", "uid": "1234"},
}
SPEC = {
    "gpuClass": "a10g",
    "gpus": 1,
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"x": 1}},
    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
    "triton": {
        "image": "tritonserver:24.10",
        "args": ["--log-verbose=1"],
        "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    },
    "storage": {"pvc": {"claimName": "models", "subPath": "repo"}, "mountPath": "/repo"},
    "replicas": {"min": 0, "max": 4},
    "memoryPerReplica": "20Gi",
}


def _container(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_runs_triton_in_explicit_mode_on_the_pool_gpu_class():
    pool = pool_spec("gpu-a", "team", SPEC)
    deployment = build_deployment(pool, OWNER)
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert deployment["metadata"]["namespace"] == "team"
    container = _container(deployment)
    assert container["image"] == "tritonserver:24.10"
    assert "--model-control-mode=explicit" in container["args"]
    assert "--model-repository=/repo" in container["args"]
    assert container["args"][-1] == "--log-verbose=1"  # the pool's own args come last
    assert container["env"] == [{"name": "AWS_REGION", "value": "eu-west-1"}]
    assert container["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": 1}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/repo", "readOnly": True, "subPath": "repo"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == SPEC["nodeSelector"]
    assert pod["tolerations"] == SPEC["tolerations"]
    assert pod["affinity"] == SPEC["affinity"]
    claim = next(v for v in pod["volumes"] if v["name"] == "models")
    assert claim["persistentVolumeClaim"]["claimName"] == "models"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_cpu_pool_on_object_store_has_no_gpu_and_no_volume():
    spec = {**SPEC, "gpus": 0, "resources": {}, "storage": {"uri": "gs://bucket/repo"}}
    deployment = build_deployment(pool_spec("cpu", "team", spec), OWNER)
    container = _container(deployment)
    assert "resources" not in container
    assert "--model-repository=gs://bucket/repo" in container["args"]
    names = [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]]
    assert names == ["dshm"]


def test_replicas_set_at_creation_and_left_to_the_scaler_afterwards():
    scaling = pool_spec("p", "ns", SPEC)  # min 0, max 4: a scaler owns replicas
    assert desired_replicas(scaling, None) == 0
    assert desired_replicas(scaling, 3) == 3
    assert desired_replicas(scaling, 9) == 4  # clamped into [min, max]
    fixed = pool_spec("p", "ns", {**SPEC, "replicas": {"min": 2, "max": 2}})
    assert desired_replicas(fixed, 5) == 2


def test_service_exposes_http_grpc_metrics_to_the_pool_pods():
    pool = pool_spec("gpu-a", "team", SPEC)
    service = build_service(pool, OWNER)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    ]
    assert service["spec"]["selector"] == build_deployment(pool)["spec"]["selector"]["matchLabels"]


def test_pdb_limits_disruption_of_the_pool_pods():
    pool = pool_spec("gpu-a", "team", SPEC)
    pdb = build_pdb(pool, OWNER, api_version="policy/v1beta1")
    assert pdb["apiVersion"] == "policy/v1beta1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["shoal.dev/pool"] == "gpu-a"
