"""The chart with real Helm (helm-sdkpy) on a real API server (RBAC on): lint; install with
several values files and read every object back; upgrade; uninstall; the CRDs become Established;
bad values refused by the schema naming the value; monitoring objects only where their API is
served. NetworkPolicy is rendered and asserted here; nothing enforces it without a CNI."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.operator.crds import all_crds
from tests.support.helm import (
    CHART,
    install,
    lint,
    read_back,
    uninstall,
    upgrade,
)
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]
VALUES = Path(__file__).parent / "values"


def _name() -> str:
    return f"h-{uuid.uuid4().hex[:6]}"


def _by_kind(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects
    }


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _installed(helm_cluster, values: dict[str, Any]):
    """Install a release in a fresh namespace; every rendered object is on the server."""
    release = namespace = _name()
    objects = install(helm_cluster.cluster, release, namespace, values)
    with helm_cluster.cluster.http() as http:
        stored = [read_back(http, o) for o in objects]
    missing = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o, s in zip(objects, stored, strict=True)
        if s is None
    ]
    assert not missing, f"rendered but not on the server: {missing}"
    return release, namespace, _by_kind(stored)


def test_lint_finds_no_errors():
    result = lint()
    errors = [m for m in result["Messages"] if m["Severity"] >= 3]
    assert not errors and not result["Errors"], result
    # Lint renders for its default Kubernetes version (policy/v1 not served): the PDB falls back
    # to policy/v1beta1 by capability, the only warning allowed.
    warnings = [m for m in result["Messages"] if m["Severity"] == 2]
    assert all("PodDisruptionBudget" in str(m["Err"]) for m in warnings), warnings


def test_chart_crds_are_the_operators():
    shipped = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    from shoal.operator.crds import render

    expected = {f"{crd['metadata']['name']}.yaml": render(crd) for crd in all_crds()}
    assert shipped == expected, "helm/shoal/crds/ is stale: run `bash scripts/sync-chart-crds.sh`"


def test_defaults_install_established_crds_locked_down_pods_and_least_rbac(helm_cluster):
    release, namespace, objects = _installed(helm_cluster, {})
    with helm_cluster.cluster.http() as http:
        for crd in all_crds():
            name = crd["metadata"]["name"]

            def established(name=name):
                stored = http.get(
                    f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                ).json()
                return any(
                    c["type"] == "Established" and c["status"] == "True"
                    for c in stored.get("status", {}).get("conditions", [])
                )

            wait_for(established, 30, what=f"CRD {name} Established")
    operator = objects[("Deployment", namespace, f"{release}-operator")]
    assert operator["spec"]["replicas"] == 1  # one active operator ...
    assert operator["spec"]["strategy"]["type"] == "Recreate"  # ... also during an upgrade
    args = _container(operator)["args"]
    assert f"--namespace={namespace}" in args and "--all-namespaces" not in args
    env = {e["name"]: e for e in _container(operator)["env"]}
    assert env["SHOAL_TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        f"{release}-triton-admin"
    )
    assert env["SHOAL_OPERATOR_ROUTER_SCALER"]["value"] == (f"{release}-router.{namespace}:8003")
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in env["SHOAL_OPERATOR_ALLOWED_IMAGES"]["value"]
    router = objects[("Deployment", namespace, f"{release}-router")]
    router_args = _container(router)["args"]
    assert f"--namespace={namespace}" in router_args
    assert "--restricted-api-header=shoal-admin-key" in router_args
    assert "--scaler-port=8003" in router_args
    # Numbers reach the flags as integers (Helm reads YAML numbers as floats).
    assert {"--max-body-bytes=536870912", "--max-hold-seconds=60"} <= set(router_args)
    assert "replicas" not in router["spec"] or router["spec"]["replicas"] >= 1  # the HPA's
    router_env = {e["name"] for e in _container(router)["env"]}
    assert not any("ADMIN" in name for name in router_env)  # the router never holds the key
    for deployment in (operator, router):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = _container(deployment)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security["allowPrivilegeEscalation"] is False
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    hpa = objects[("HorizontalPodAutoscaler", namespace, f"{release}-router")]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    pdb = objects[("PodDisruptionBudget", namespace, f"{release}-router")]
    assert pdb["spec"]["maxUnavailable"] == 1
    service = objects[("Service", namespace, f"{release}-router")]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8000, "grpc": 8001, "metrics": 8002, "scaler": 8003,
    }  # fmt: skip
    secret = objects[("Secret", namespace, f"{release}-triton-admin")]
    assert len(base64.b64decode(secret["data"]["key"])) == 40
    policy = objects[("NetworkPolicy", namespace, f"{release}-triton")]
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "shoal-triton"
    }
    triton_ports, metrics = policy["spec"]["ingress"]
    peers = [
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in triton_ports["from"]
    ]
    assert peers == ["shoal-router", "shoal-operator"]
    assert [p["port"] for p in triton_ports["ports"]] == [8000, 8001]
    assert [p["port"] for p in metrics["ports"]] == [8002] and "from" not in metrics
    kinds = {kind for kind, _, _ in objects}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ClusterRole", "ConfigMap"}
    role = objects[("Role", namespace, f"{release}-router")]
    assert {tuple(r["resources"]) for r in role["rules"]} == {("inferencemodels",), ("endpoints",)}
    uninstall(helm_cluster.cluster, release, namespace)
    with helm_cluster.cluster.http() as http:
        assert read_back(http, operator) is None
        assert read_back(http, secret) is None
        # Helm never deletes CRDs (they hold the users' InferencePools and InferenceModels).
        assert (
            http.get(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/inferencepools.shoal.dev"
            ).status_code
            == 200
        )


def test_cpu_pools_and_models_are_created_with_the_release(helm_cluster):
    values = yaml.safe_load((VALUES / "cpu-pools.yaml").read_text())
    release, namespace, objects = _installed(helm_cluster, values)
    pool = objects[("InferencePool", namespace, "cpu-small")]
    assert pool["spec"]["resources"]["limits"] == {"memory": "8Gi"}
    assert pool["spec"]["scaleDownDelaySeconds"] == 300  # the CRD's default: its schema ran
    models = {name: o for (kind, _, name), o in objects.items() if kind == "InferenceModel"}
    assert models["bge-reranker"]["spec"]["priority"] == 10 and set(models) == {
        "minilm",
        "bge-reranker",
    }
    router = objects[("Deployment", namespace, f"{release}-router")]
    assert router["spec"]["replicas"] == 1
    assert not any(kind == "HorizontalPodAutoscaler" for kind, _, _ in objects)
    uninstall(helm_cluster.cluster, release, namespace)


def test_gpu_pools_in_two_namespaces_with_node_selectors_and_tolerations(helm_cluster):
    values = yaml.safe_load((VALUES / "gpu-pools.yaml").read_text())
    release = namespace = _name()
    with helm_cluster.cluster.http() as http:
        for extra in ("ml-a", "ml-b"):
            http.post("/api/v1/namespaces", json={"metadata": {"name": extra}})
    objects = _by_kind(install(helm_cluster.cluster, release, namespace, values))
    pool = objects[("InferencePool", "ml-a", "a10g")]
    assert pool["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A10G"}
    assert pool["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    for extra in ("ml-a", "ml-b"):  # rights, the admin Secret and the policy where pools live
        assert ("Role", extra, f"{release}-operator") in objects
        assert ("Secret", extra, f"{release}-triton-admin") in objects
        assert ("NetworkPolicy", extra, f"{release}-triton") in objects
    assert ("Role", namespace, f"{release}-operator") not in objects
    keys = {
        objects[("Secret", ns, f"{release}-triton-admin")]["data"]["key"]
        for ns in ("ml-a", "ml-b", namespace)
    }
    assert len(keys) == 1  # one key: the operator's copy opens every pool
    operator = objects[("Deployment", namespace, f"{release}-operator")]
    assert _container(operator)["args"][3:5] == ["--namespace=ml-a", "--namespace=ml-b"]
    pod = operator["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role/cpu": "true"}
    assert pod["tolerations"][0]["value"] == "control"
    router = objects[("Deployment", namespace, f"{release}-router")]
    assert "--namespace=ml-a" in _container(router)["args"]
    assert ("Role", "ml-a", f"{release}-router") in objects
    uninstall(helm_cluster.cluster, release, namespace)


def test_keda_off_has_no_scaler_and_no_scaled_object_rights(helm_cluster):
    values = yaml.safe_load((VALUES / "keda-off.yaml").read_text())
    release, namespace, objects = _installed(helm_cluster, values)
    operator = objects[("Deployment", namespace, f"{release}-operator")]
    assert "SHOAL_OPERATOR_ROUTER_SCALER" not in {e["name"] for e in _container(operator)["env"]}
    router = objects[("Deployment", namespace, f"{release}-router")]
    assert "--scaler-port=-1" in _container(router)["args"]
    service = objects[("Service", namespace, f"{release}-router")]
    assert "scaler" not in {p["name"] for p in service["spec"]["ports"]}
    role = objects[("Role", namespace, f"{release}-operator")]
    assert not any("keda.sh" in r["apiGroups"] for r in role["rules"])
    assert not any(kind == "NetworkPolicy" for kind, _, _ in objects)
    uninstall(helm_cluster.cluster, release, namespace)


def test_upgrade_applies_changes_and_keeps_the_admin_key(helm_cluster):
    release, namespace, objects = _installed(helm_cluster, {})
    key = objects[("Secret", namespace, f"{release}-triton-admin")]["data"]["key"]
    changed = upgrade(
        helm_cluster.cluster, release, namespace,
        {"router": {"maxHoldSeconds": 5, "autoscaling": {"maxReplicas": 3}}, "keda": {"enabled": False}},
    )  # fmt: skip
    assert not any(
        o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["maxReplicas"] != 3 for o in changed
    )
    with helm_cluster.cluster.http() as http:
        stored = {(o["kind"], o["metadata"]["name"]): read_back(http, o) for o in changed}
        router = stored[("Deployment", f"{release}-router")]
        assert "--max-hold-seconds=5" in _container(router)["args"]
        assert stored[("HorizontalPodAutoscaler", f"{release}-router")]["spec"]["maxReplicas"] == 3
        assert stored[("Secret", f"{release}-triton-admin")]["data"]["key"] == key
        role = stored[("Role", f"{release}-operator")]
        assert not any("keda.sh" in r["apiGroups"] for r in role["rules"])
    uninstall(helm_cluster.cluster, release, namespace)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"router": {"replicas": "two"}}, "/router/replicas"),
        ({"router": {"httpPort": 70000}}, "/router/httpPort"),
        ({"operator": {"allowedImages": "nvcr.io/x"}}, "/operator/allowedImages"),
        ({"keda": {"enable": False}}, "enable"),  # a typo is refused, not ignored
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"triton": {"restrictedApi": {"header": "Has Space"}}}, "/triton/restrictedApi/header"),
        ({"monitoring": {"prometheusRule": {"memoryBudgetRatio": 2}}}, "memoryBudgetRatio"),
        ({"pools": [{"spec": {}}]}, "name"),
    ],
)
def test_bad_values_are_refused_naming_the_value(helm_cluster, values, named):
    from tests.support.helm import helm

    release = namespace = _name()
    with pytest.raises(helm().InstallError) as refused:
        install(helm_cluster.cluster, release, namespace, values)
    message = str(refused.value)
    assert "schema" in message and named in message, message
