"""ServiceMonitors, PrometheusRule and the Grafana dashboard: rendered only when enabled and (for
the Prometheus Operator's kinds) only where the cluster serves their API; every `shoal_` metric
an alert or panel queries is one the operator or router exports."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from prometheus_client import REGISTRY

import shoal.operator.metrics  # noqa: F401  (registers the operator's metrics)
from shoal.router.metrics import RouterMetrics
from tests.support.helm import CHART, install, read_back, uninstall
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]
MONITORING = {"monitoring": {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}}  # fmt: skip
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exported_names() -> set[str]:
    families = [*REGISTRY.collect(), *RouterMetrics().registry.collect()]
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, [""])}


def queried_names(text: str) -> set[str]:
    return set(re.findall(r"\bshoal_[a-z_]+", text))


def _crd(kind: str, plural: str) -> dict:
    """A stand-in for the Prometheus Operator's CRD (any spec): what Helm needs to see the API."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                }},
            }],
        },
    }  # fmt: skip


def test_alerts_and_panels_query_metrics_that_exist():
    exported = exported_names()
    rules = (CHART / "templates" / "monitoring.yaml").read_text()
    dashboard = (CHART / "dashboards" / "shoal.json").read_text()
    json.loads(dashboard)
    for source in (rules, dashboard):
        queried = queried_names(source)
        assert queried and queried <= exported, queried - exported


def test_monitoring_objects_only_when_enabled_and_served(helm_cluster):
    cluster = helm_cluster.cluster
    release = namespace = f"m-{uuid.uuid4().hex[:6]}"
    objects = install(cluster, release, namespace, MONITORING)
    kinds = [o["kind"] for o in objects]
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds  # API not served
    dashboard = next(o for o in objects if o["kind"] == "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["shoal.json"])["uid"] == "shoal"
    uninstall(cluster, release, namespace)

    with cluster.http() as http:
        for kind, plural in (
            ("ServiceMonitor", "servicemonitors"),
            ("PrometheusRule", "prometheusrules"),
        ):
            response = http.post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=_crd(kind, plural)
            )
            assert response.status_code in (201, 409), response.text
        wait_for(
            lambda: http.get("/apis/monitoring.coreos.com/v1").status_code == 200,
            30, what="monitoring.coreos.com/v1 served",
        )  # fmt: skip
        release = namespace = f"m-{uuid.uuid4().hex[:6]}"
        objects = install(cluster, release, namespace, MONITORING)
        monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
        assert set(monitors) == {f"{release}-operator", f"{release}-router", f"{release}-triton"}
        triton = read_back(http, monitors[f"{release}-triton"])
        assert triton["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
        assert triton["metadata"]["labels"]["release"] == "prom"
        (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
        alerts = {r["alert"]: r for r in read_back(http, rule)["spec"]["groups"][0]["rules"]}
        assert set(alerts) == {
            "ShoalModelLoadFailures", "ShoalRequestsHeldPastDeadline",
            "ShoalReplicaMemoryOverBudget", "ShoalReplicaGpuMemoryOverBudget", "ShoalOperatorDown",
        }  # fmt: skip
        assert f'job="{release}-operator"' in alerts["ShoalOperatorDown"]["expr"]
        assert "> 0.9" in alerts["ShoalReplicaMemoryOverBudget"]["expr"]
        # Prometheus' own templates survive Helm's rendering.
        assert (
            "{{ $labels.model }}"
            in alerts["ShoalRequestsHeldPastDeadline"]["annotations"]["summary"]
        )
        uninstall(cluster, release, namespace)
