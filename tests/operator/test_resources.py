"""The pool's Deployment, Service and PodDisruptionBudget, built as data."""

from __future__ import annotations

import pytest

from shoal.operator.resources import (
    TritonAdmin,
    build_deployment,
    build_pdb,
    build_service,
    desired_replicas,
)
from shoal.operator.specs import SpecError, pool_spec

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
    # shoal's configs are complete: no throwaway stub per python model (a second per load)
    assert "--disable-auto-complete-config" in container["args"]
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
    assert names == ["dshm", "tmp"]  # shared memory and a writable /tmp, no model volume


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


def test_triton_pod_runs_locked_down_non_root_read_only_without_a_token():
    pod = build_deployment(pool_spec("gpu-a", "team", SPEC))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = _container({"spec": {"template": {"spec": pod}}})["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts  # the writable places on a read-only root


def test_restricted_repository_api_takes_its_key_from_the_secret_not_the_manifest():
    admin = TritonAdmin(header="shoal-admin-key", secret="shoal-triton-admin")
    container = _container(build_deployment(pool_spec("gpu-a", "team", SPEC), admin=admin))
    restriction = "model-repository:shoal-admin-key=$(SHOAL_TRITON_ADMIN_KEY)"
    assert f"--http-restricted-api={restriction}" in container["args"]
    assert f"--grpc-restricted-protocol={restriction}" in container["args"]
    assert container["args"][-1] == "--log-verbose=1"  # the pool's own args still come last
    assert container["env"][-1] == {
        "name": "SHOAL_TRITON_ADMIN_KEY",
        "valueFrom": {"secretKeyRef": {"name": "shoal-triton-admin", "key": "key"}},
    }
    unrestricted = _container(build_deployment(pool_spec("gpu-a", "team", SPEC)))
    assert not any("restricted" in arg for arg in unrestricted["args"])


@pytest.mark.parametrize(
    ("allowed", "image", "ok"),
    [
        ("", "anything:1", True),  # no list: any image
        ("tritonserver:24.10", "tritonserver:24.10", True),
        ("nvcr.io/nvidia/tritonserver:24.10-py3", "tritonserver:24.10", False),
        ("ghcr.io/shoal/triton:*, tritonserver:24.09", "ghcr.io/shoal/triton:1.2", True),
        ("ghcr.io/shoal/triton:*", "ghcr.io/other/triton:1.2", False),
    ],
)
def test_pool_image_must_be_on_the_allow_list(monkeypatch, allowed, image, ok):
    monkeypatch.setenv("SHOAL_OPERATOR_ALLOWED_IMAGES", allowed)
    spec = {**SPEC, "triton": {"image": image}}
    if ok:
        assert pool_spec("p", "ns", spec).image == image
        return
    with pytest.raises(SpecError, match="operator.allowedImages") as refused:
        pool_spec("p", "ns", spec)
    assert repr(image) in str(refused.value)
