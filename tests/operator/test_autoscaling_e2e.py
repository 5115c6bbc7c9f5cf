"""The pool's KEDA ScaledObject against a real kube-apiserver.

KEDA itself is not installed here: a minimal CustomResourceDefinition for `scaledobjects.keda.sh`
(any spec accepted) stands in for KEDA's, which is all the operator needs (discovery, then the
object). The CRD is cluster-wide, so each test that installs it removes it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.operator.helpers import Kube, pool_spec
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube]

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
KEDA_CRD = "scaledobjects.keda.sh"
SCALED_OBJECT = "/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/gpu-a"
DEPLOYMENT = "/apis/apps/v1/namespaces/{ns}/deployments/gpu-a"
AUTOSCALING = {"prometheusAddress": "http://prometheus.monitoring:9090", "threshold": 4}


def _scaled_object_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": KEDA_CRD},
        "spec": {
            "group": "keda.sh",
            "scope": "Namespaced",
            "names": {
                "kind": "ScaledObject",
                "plural": "scaledobjects",
                "singular": "scaledobject",
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def _served(kube: Kube) -> bool:
    response = kube.http.get("/apis/keda.sh/v1alpha1")
    return response.status_code == 200 and any(
        r["name"] == "scaledobjects" for r in response.json().get("resources", [])
    )


@pytest.fixture
def install_keda_crd(kube: Kube) -> Iterator[Callable[[], None]]:
    """`install_keda_crd()` serves scaledobjects.keda.sh until the test ends."""
    installed = []

    def install() -> None:
        kube.http.post(CRDS, json=_scaled_object_crd()).raise_for_status()
        installed.append(True)
        wait_for(lambda: _served(kube), 30, what="scaledobjects.keda.sh served")

    yield install
    if installed:
        kube.http.delete(f"{CRDS}/{KEDA_CRD}").raise_for_status()
        wait_for(lambda: not _served(kube), 60, what="scaledobjects.keda.sh gone")
        wait_for(
            lambda: kube.http.get(f"{CRDS}/{KEDA_CRD}").status_code == 404,
            60,
            what="CRD deleted",
        )


def _condition(kube: Kube, type_: str) -> dict | None:
    status = (kube.get("inferencepools", "gpu-a") or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def test_scaled_object_is_created_owned_and_follows_the_pool_spec(
    kube, run_operator, repository, install_keda_crd
):
    install_keda_crd()
    spec = pool_spec(
        repository,
        "2Gi",
        replicas={"min": 0, "max": 3},
        scaleDownDelaySeconds=120,
        autoscaling=AUTOSCALING,
    )
    with run_operator():
        kube.create("inferencepools", "InferencePool", "gpu-a", spec).raise_for_status()
        scaled = wait_for(lambda: kube.get_core(SCALED_OBJECT), 30, what="ScaledObject")
        pool = kube.get("inferencepools", "gpu-a")
        (owner,) = scaled["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("InferencePool", pool["metadata"]["uid"])
        body = scaled["spec"]
        assert body["scaleTargetRef"]["name"] == "gpu-a"
        assert (body["minReplicaCount"], body["maxReplicaCount"]) == (0, 3)
        assert body["cooldownPeriod"] == 120
        (trigger,) = body["triggers"]
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["serverAddress"] == AUTOSCALING["prometheusAddress"]
        assert trigger["metadata"]["threshold"] == "4"
        assert f'namespace="{kube.namespace}"' in trigger["metadata"]["query"]
        condition = wait_for(lambda: _condition(kube, "Autoscaling"), 30, what="Autoscaling")
        assert (condition["status"], condition["reason"]) == ("True", "ScaledObject")
        assert kube.get_core(DEPLOYMENT)["spec"]["replicas"] == 0  # min; KEDA's from here on

        kube.patch_spec(
            "inferencepools",
            "gpu-a",
            {
                "replicas": {"min": 1, "max": 5},
                "scaleDownDelaySeconds": 30,
                "autoscaling": {"threshold": 2, "query": "sum(shoal_router_queued)"},
            },
        )

        def updated():
            current = kube.get_core(SCALED_OBJECT)
            return current if current["spec"]["maxReplicaCount"] == 5 else None

        body = wait_for(updated, 30, what="ScaledObject update")["spec"]
        assert (body["minReplicaCount"], body["cooldownPeriod"]) == (1, 30)
        (trigger,) = body["triggers"]
        assert trigger["metadata"]["query"] == "sum(shoal_router_queued)"
        assert trigger["metadata"]["threshold"] == "2"

        # A fixed-size pool has no scaler: the operator removes its ScaledObject.
        kube.patch_spec("inferencepools", "gpu-a", {"replicas": {"min": 2, "max": 2}})
        wait_for(lambda: kube.get_core(SCALED_OBJECT) is None, 30, what="ScaledObject removed")
        condition = wait_for(
            lambda: (c := _condition(kube, "Autoscaling")) and c["reason"] == "FixedSize" and c,
            30,
            what="FixedSize condition",
        )
        assert condition["status"] == "False"


def test_without_keda_the_pool_says_so_and_keeps_min_until_keda_arrives(
    kube, run_operator, repository, install_keda_crd
):
    spec = pool_spec(repository, "2Gi", replicas={"min": 1, "max": 4}, autoscaling=AUTOSCALING)
    with run_operator():
        kube.create("inferencepools", "InferencePool", "gpu-a", spec).raise_for_status()
        condition = wait_for(
            lambda: (
                (c := _condition(kube, "Autoscaling")) and c["reason"] == "KedaNotInstalled" and c
            ),
            30,
            what="KedaNotInstalled condition",
        )
        assert condition["status"] == "False"
        assert "KEDA is not installed" in condition["message"]
        assert "stay at 1" in condition["message"]
        assert kube.get_core(DEPLOYMENT)["spec"]["replicas"] == 1
        # kopf posts Events from a background queue: the condition may be written first.
        wait_for(
            lambda: any(e["reason"] == "KedaNotInstalled" for e in kube.events("gpu-a")),
            10,
            what="KedaNotInstalled Event",
        )

        # KEDA installed later: the status timer notices and creates the ScaledObject.
        install_keda_crd()
        scaled = wait_for(lambda: kube.get_core(SCALED_OBJECT), 30, what="ScaledObject")
        assert scaled["spec"]["maxReplicaCount"] == 4
        wait_for(
            lambda: (c := _condition(kube, "Autoscaling")) and c["status"] == "True",
            30,
            what="Autoscaling True",
        )
