"""The pool's KEDA ScaledObject, built as data, and spec.autoscaling read from the pool spec."""

from __future__ import annotations

import re

import pytest

from shoal.operator.resources import (
    build_scaled_object,
    demand_query,
    scaled_object_triggers,
    wants_scaled_object,
)
from shoal.operator.specs import SpecError, pool_spec

OWNER = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "InferencePool",
    "metadata": {"name": "gpu-a", "uid": "1234"},
}
AUTOSCALING = {"prometheusAddress": "http://prometheus.monitoring:9090", "threshold": 4}


def _pool(**overrides):
    spec = {
        "triton": {"image": "tritonserver:24.10"},
        "storage": {"pvc": {"claimName": "models"}},
        "memoryPerReplica": "20Gi",
        "replicas": {"min": 0, "max": 4},
        "scaleDownDelaySeconds": 600,
        "autoscaling": AUTOSCALING,
    }
    spec.update(overrides)
    return pool_spec("gpu-a", "team-a", spec)


def test_scaled_object_targets_the_deployment_with_the_pools_bounds_and_delay():
    scaled = build_scaled_object(_pool(), OWNER)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    assert scaled["metadata"]["name"] == "gpu-a" and scaled["metadata"]["namespace"] == "team-a"
    (owner,) = scaled["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferencePool", "1234", True)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gpu-a",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 4)
    assert spec["cooldownPeriod"] == 600
    # idleReplicaCount must be below minReplicaCount in KEDA: no use with min 0.
    assert "idleReplicaCount" not in spec
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600


def test_trigger_queries_tritons_pending_requests_summed_over_the_pool():
    (trigger,) = build_scaled_object(_pool(), OWNER)["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == "http://prometheus.monitoring:9090"
    assert metadata["threshold"] == "4"  # KEDA reads trigger metadata as strings
    query = metadata["query"]
    assert query == demand_query(_pool())
    assert query.startswith("sum(nv_inference_pending_request_count{")
    assert 'namespace="team-a"' in query and 'service="gpu-a"' in query
    assert query.endswith("or vector(0)")


def test_a_custom_query_and_fractional_threshold_are_passed_through():
    pool = _pool(autoscaling={**AUTOSCALING, "query": "sum(router_queue)", "threshold": 0.5})
    (trigger,) = build_scaled_object(pool)["spec"]["triggers"]
    assert trigger["metadata"]["query"] == "sum(router_queue)"
    assert trigger["metadata"]["threshold"] == "0.5"


def test_hpa_window_is_capped_at_kubernetes_limit_but_cooldown_is_not():
    spec = build_scaled_object(_pool(scaleDownDelaySeconds=7200))["spec"]
    assert spec["cooldownPeriod"] == 7200
    window = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert window["stabilizationWindowSeconds"] == 3600


def test_only_a_scaling_pool_with_autoscaling_wants_a_scaled_object():
    assert wants_scaled_object(_pool())
    assert not wants_scaled_object(_pool(replicas={"min": 2, "max": 2}))
    assert not wants_scaled_object(_pool(autoscaling=None))


@pytest.mark.parametrize(
    ("autoscaling", "field"),
    [
        ({"query": "sum(q)", "threshold": 4}, "prometheusAddress"),
        ({"prometheusAddress": "http://p:9090", "threshold": 0}, "threshold"),
    ],
)
def test_incomplete_autoscaling_is_a_spec_error_naming_the_field(autoscaling, field):
    with pytest.raises(SpecError, match=f"spec.autoscaling.{field}"):
        _pool(autoscaling=autoscaling)


def test_builder_refuses_a_pool_without_autoscaling():
    with pytest.raises(ValueError, match="no spec.autoscaling"):
        build_scaled_object(_pool(autoscaling=None))


ROUTER = "shoal-router.shoal-system:8003"


def test_a_pool_with_a_router_gets_an_external_push_trigger_to_its_scaler():
    pool = _pool(autoscaling={"routerScalerAddress": ROUTER, "threshold": 2})
    (trigger,) = build_scaled_object(pool, OWNER)["spec"]["triggers"]
    assert trigger == {
        "type": "external-push",
        "metadata": {"scalerAddress": ROUTER, "pool": "gpu-a", "targetSize": "2"},
    }


def test_router_and_prometheus_triggers_together_router_first():
    pool = _pool(autoscaling={**AUTOSCALING, "routerScalerAddress": ROUTER})
    kinds = [t["type"] for t in build_scaled_object(pool)["spec"]["triggers"]]
    assert kinds == ["external-push", "prometheus"]


def test_the_operators_router_setting_applies_to_every_scaling_pool_unless_the_pool_names_its_own():
    # No spec.autoscaling at all: the router's demand scales the pool, 4 requests per replica.
    bare = _pool(autoscaling=None)
    assert not wants_scaled_object(bare)
    assert wants_scaled_object(bare, router_scaler=ROUTER)
    (trigger,) = build_scaled_object(bare, router_scaler=ROUTER)["spec"]["triggers"]
    assert trigger["metadata"] == {"scalerAddress": ROUTER, "pool": "gpu-a", "targetSize": "4"}
    own = _pool(autoscaling={"routerScalerAddress": "router.team-a:8003", "threshold": 1})
    (trigger,) = scaled_object_triggers(own, router_scaler=ROUTER)
    assert trigger["metadata"]["scalerAddress"] == "router.team-a:8003"
    # A fixed-size pool never gets one, router or not.
    assert not wants_scaled_object(_pool(replicas={"min": 2, "max": 2}), router_scaler=ROUTER)


def test_the_crd_accepts_a_router_scaler_address_and_refuses_a_url():
    from shoal.operator.crds import pool_crd

    schema = pool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    autoscaling = schema["properties"]["spec"]["properties"]["autoscaling"]
    assert autoscaling["required"] == ["threshold"]
    pattern = re.compile(autoscaling["properties"]["routerScalerAddress"]["pattern"])
    assert pattern.match(ROUTER) and pattern.match("10.0.0.7:8003")
    assert not pattern.match("http://router:8003") and not pattern.match("router")
