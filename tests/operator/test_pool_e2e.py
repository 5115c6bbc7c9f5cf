"""InferencePool against a real kube-apiserver: children created, owned, rolled out, validated."""

from __future__ import annotations

import pytest

from tests.operator.helpers import pool_spec
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube]

DEPLOYMENT = "/apis/apps/v1/namespaces/{ns}/deployments/gpu-a"
SERVICE = "/api/v1/namespaces/{ns}/services/gpu-a"
PDB = "/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/gpu-a"


def test_pool_creates_owned_deployment_service_pdb_and_a_spec_change_rolls_out(
    kube, run_operator, repository
):
    spec = pool_spec(repository, "2Gi", gpus=1, gpuClass="a10g", nodeSelector={"gpu": "a10g"})
    spec["replicas"] = {"min": 2, "max": 2}
    with run_operator():
        kube.create("inferencepools", "InferencePool", "gpu-a", spec).raise_for_status()
        deployment = wait_for(lambda: kube.get_core(DEPLOYMENT), 30, what="Deployment")
        service = wait_for(lambda: kube.get_core(SERVICE), 30, what="Service")
        pdb = wait_for(lambda: kube.get_core(PDB), 30, what="PodDisruptionBudget")
        pool = kube.get("inferencepools", "gpu-a")
        for child in (deployment, service, pdb):
            (owner,) = child["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"]) == ("InferencePool", pool["metadata"]["uid"])
        assert deployment["spec"]["replicas"] == 2
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "--model-control-mode=explicit" in container["args"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "a10g"}
        assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002]
        status = wait_for(
            lambda: (kube.get("inferencepools", "gpu-a").get("status") or {}).get(
                "observedGeneration"
            ),
            30,
            what="pool status",
        )
        assert status == 1
        first_generation = deployment["metadata"]["generation"]

        # A new image and args roll out through the Deployment's template.
        kube.patch_spec(
            "inferencepools",
            "gpu-a",
            {"triton": {"image": "tritonserver:25.01", "args": ["--log-verbose=1"]}},
        )

        def rolled():
            current = kube.get_core(DEPLOYMENT)
            (c,) = current["spec"]["template"]["spec"]["containers"]
            return current if c["image"] == "tritonserver:25.01" else None

        rolled_out = wait_for(rolled, 30, what="rolled-out Deployment")
        assert rolled_out["metadata"]["generation"] > first_generation
        (container,) = rolled_out["spec"]["template"]["spec"]["containers"]
        assert container["args"][-1] == "--log-verbose=1"
        pool = wait_for(
            lambda: (
                (p := kube.get("inferencepools", "gpu-a"))["status"].get("observedGeneration") == 2
                and p
            ),
            30,
            what="observedGeneration 2",
        )
        # The PodDisruptionBudget follows the pool.
        kube.patch_spec("inferencepools", "gpu-a", {"maxUnavailable": 2})
        wait_for(lambda: kube.get_core(PDB)["spec"]["maxUnavailable"] == 2, 30, what="PDB update")
        # No endpoints (no kubelet here): the pool says it waits for replicas.
        wait_for(
            lambda: kube.get("inferencepools", "gpu-a")["status"].get("phase") == "Pending",
            10,
            what="Pending",
        )


def test_operator_leaves_replicas_to_the_scaler_of_a_scaling_pool(kube, run_operator, repository):
    spec = pool_spec(repository, "2Gi", replicas={"min": 1, "max": 5})
    with run_operator():
        kube.create("inferencepools", "InferencePool", "gpu-a", spec).raise_for_status()
        deployment = wait_for(lambda: kube.get_core(DEPLOYMENT), 30, what="Deployment")
        assert deployment["spec"]["replicas"] == 1
        # A scaler (KEDA/HPA) scales the Deployment up...
        kube.http.patch(
            DEPLOYMENT.format(ns=kube.namespace),
            json={"spec": {"replicas": 4}},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
        # ...and a pool change rolls out without taking those replicas back.
        kube.patch_spec("inferencepools", "gpu-a", {"triton": {"image": "tritonserver:25.01"}})

        def rolled():
            current = kube.get_core(DEPLOYMENT)
            image = current["spec"]["template"]["spec"]["containers"][0]["image"]
            return current if image == "tritonserver:25.01" else None

        assert wait_for(rolled, 30, what="rollout")["spec"]["replicas"] == 4


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"memoryPerReplica": "lots"}, "memoryPerReplica"),
        ({"replicas": {"min": -1, "max": 1}}, "replicas.min"),
        ({"storage": {"uri": "http://bucket/repo"}}, "storage.uri"),
        ({"storage": {}}, "storage"),
        ({"triton": {}}, "triton.image"),
        ({"memoryPerReplica": "99999999999999999999Ei"}, "memoryPerReplica"),
        ({"memoryPerReplica": "500m"}, "memoryPerReplica"),
        ({"replicas": {"min": 1, "max": 1000000000}}, "replicas.max"),
        ({"gpus": 100000}, "gpus"),
        ({"gpuClass": "a" * 64}, "gpuClass"),
    ],
)
def test_schema_rejects_invalid_pools_naming_the_field(kube, repository, change, expected):
    response = kube.create(
        "inferencepools", "InferencePool", "bad", {**pool_spec(repository, "1Gi"), **change}
    )
    assert response.status_code == 422, response.text
    assert expected in response.json()["message"]


def test_pool_with_min_above_max_is_reported_in_status(kube, run_operator, repository):
    with run_operator():
        kube.create(
            "inferencepools",
            "InferencePool",
            "gpu-a",
            pool_spec(repository, "1Gi", replicas={"min": 3, "max": 2}),
        ).raise_for_status()
        status = wait_for(
            lambda: (
                (kube.get("inferencepools", "gpu-a").get("status") or {}).get("phase") == "Failed"
                and kube.get("inferencepools", "gpu-a")["status"]
            ),
            30,
            what="Failed phase",
        )
        valid = next(c for c in status["conditions"] if c["type"] == "Valid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert "min (3)" in valid["message"] and "max (2)" in valid["message"]
        assert kube.get_core(DEPLOYMENT) is None


def test_a_pool_name_kubernetes_cannot_use_is_one_short_condition_and_event_without_retries(
    kube, run_operator, repository
):
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", "pool.v2", pool_spec(repository, "1Gi")
        ).raise_for_status()
        status = wait_for(
            lambda: (
                (s := (kube.get("inferencepools", "pool.v2") or {}).get("status") or {}).get(
                    "phase"
                )
                == "Failed"
                and s
            ),
            30,
            what="Failed phase",
        )
        valid = next(c for c in status["conditions"] if c["type"] == "Valid")
        assert valid["reason"] == "InvalidSpec" and "DNS-1035" in valid["message"]
        assert "pool-v2" in valid["message"] and len(valid["message"]) < 400
        # A valid pool created after it gets its status: the operator has moved on, and the
        # invalid one was told once (no retries, no raw API error).
        kube.create(
            "inferencepools", "InferencePool", "gpu-a", pool_spec(repository, "1Gi")
        ).raise_for_status()
        wait_for(
            lambda: (
                (kube.get("inferencepools", "gpu-a").get("status") or {}).get("replicas")
                is not None
            ),
            30,
            what="the next pool's status",
        )
        events = [e for e in kube.events("pool.v2") if e["type"] == "Warning"]
        assert len(events) == 1 and events[0].get("count", 1) == 1, events
        assert "DNS-1035" in events[0]["message"]


def test_the_pool_timer_and_the_apply_handler_keep_each_others_conditions(
    kube, run_operator, repository
):
    with run_operator():
        kube.create(
            "inferencepools", "InferencePool", "gpu-a", pool_spec(repository, "1Gi")
        ).raise_for_status()
        types = lambda: {  # noqa: E731
            c["type"]
            for c in (kube.get("inferencepools", "gpu-a").get("status") or {}).get("conditions")
            or []
        }
        wait_for(lambda: {"Valid", "Applied", "Autoscaling", "Ready"} <= types(), 30, what="all")
        # A spec change re-runs the apply handler while the timer keeps ticking (1 s).
        for image in ("tritonserver:25.01", "tritonserver:25.02", "tritonserver:25.03"):
            kube.patch_spec("inferencepools", "gpu-a", {"triton": {"image": image}})
            generation = kube.get("inferencepools", "gpu-a")["metadata"]["generation"]
            wait_for(
                lambda g=generation: (
                    (kube.get("inferencepools", "gpu-a")["status"]).get("observedGeneration") == g
                ),
                30,
                what=f"generation {generation} applied",
            )
            assert {"Valid", "Applied", "Autoscaling", "Ready"} <= types()
