"""Least privilege, measured: the chart's RBAC rules against the calls the operator and router
make, recorded by the API server's audit log while they run as the chart's ServiceAccounts on a
server that enforces RBAC (tests/support/helm.py).

- Operator: the operator's core end-to-end tests (pools, models, autoscaling) run in a pytest
  subprocess against this server (tests/support/kube.py EXISTING_CLUSTER_ENV), the operator
  authenticated as `shoal-operator`, its rights only those of the chart's ClusterRole. They must
  pass (nothing missing: a refused call fails them, and no request may get a 403), and every
  granted (group, resource, verb) must appear among the recorded calls (nothing extra).
- Router: `shoal router run --namespace` in cluster mode as `shoal-router`: it lists and watches
  InferenceModels and Endpoints and asks for a cold model by patching its annotations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.runtime.triton import free_port
from tests.support.helm import NAMESPACE, OPERATOR_SA, RELEASE, ROUTER_SA, install, read_back
from tests.support.kube import EXISTING_CLUSTER_ENV, wait_for

pytestmark = [pytest.mark.kube, pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
SHOAL = str(Path(sys.executable).parent / "shoal")

# The operator tests that exercise its API calls: a pool's children created, rolled out and
# scaled; models loaded, failed, evicted and deleted; the ScaledObject with and without KEDA.
OPERATOR_TESTS = [
    "tests/operator/test_pool_e2e.py",
    "tests/operator/test_model_e2e.py::test_model_is_loaded_on_min_replicas_and_ready_with_status_filled",
    "tests/operator/test_model_e2e.py::test_delete_unloads_everywhere_and_removes_the_object",
    "tests/operator/test_model_e2e.py::test_unknown_pool_and_missing_memory_are_reported_with_what_to_do",
    "tests/operator/test_autoscaling_e2e.py",
]

Triple = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted for a code path the e2e tests do not reach, with the call that needs it (checked to be
# in the code, so the entry goes when the call does).
UNEXERCISED: dict[Triple, tuple[str, str]] = {
    # A pool's Service is replaced only when shoal's own Service shape (ports, selector) changes:
    # after an operator upgrade that changes it.
    ("", "services", "update"): ("src/shoal/operator/kube.py", "replace_namespaced_service"),
}


def granted(rules: list[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def called(events: list[dict[str, Any]]) -> set[Triple]:
    triples = set()
    for event in events:
        ref = event.get("objectRef")
        if ref is None:  # discovery (/api, /apis): every authenticated user may
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        triples.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return triples


def refused(events: list[dict[str, Any]]) -> list[str]:
    return [f"{e['verb']} {e['requestURI']}" for e in events if e["responseStatus"]["code"] == 403]


def _format(triples: set[Triple]) -> str:
    return ", ".join(
        f"{verb} {group or 'core'}/{resource}" for group, resource, verb in sorted(triples)
    )


@pytest.fixture(scope="module")
def chart_release(helm_cluster):
    # clusterWide: the e2e tests make a namespace per test.
    return install(helm_cluster.cluster, RELEASE, NAMESPACE, {"clusterWide": True})


def test_operator_calls_are_exactly_the_charts_rules(helm_cluster, chart_release, tmp_path):
    cluster = helm_cluster.cluster
    description = tmp_path / "cluster.json"
    description.write_text(
        json.dumps(
            {
                "server": cluster.server,
                "token": cluster.token,
                "ca_path": str(cluster.ca_path),
                "kubeconfig": str(cluster.kubeconfig),
                "workdir": str(cluster.workdir),
                "operator_kubeconfig": str(helm_cluster.kubeconfigs[OPERATOR_SA]),
            }
        )
    )
    environment = {**os.environ, EXISTING_CLUSTER_ENV: str(description)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--tb=short",
         "--show-capture=no", *OPERATOR_TESTS],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert run.returncode == 0, f"operator e2e under the chart's RBAC failed:\n{run.stdout[-6000:]}"
    events = helm_cluster.requests_of(OPERATOR_SA)
    assert events, "the audit log recorded no request of the operator's ServiceAccount"
    assert not refused(events), f"calls the chart's rules refused: {refused(events)}"
    with cluster.http() as http:
        role = next(o for o in chart_release if o["kind"] == "ClusterRole")
        rules = read_back(http, role)["rules"]
    used, allowed = called(events), granted(rules)
    assert not used - allowed, f"called without a rule: {_format(used - allowed)}"
    unexercised = allowed - used
    assert unexercised == set(UNEXERCISED), f"granted, never called: {_format(unexercised)}"
    for path, call in UNEXERCISED.values():
        assert call in (ROOT / path).read_text(), f"{call} is no longer in {path}: drop its rule"


def test_router_calls_are_exactly_the_charts_rules(helm_cluster, chart_release):
    cluster = helm_cluster.cluster
    with cluster.http() as http:
        http.post(
            f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/inferencemodels",
            json={
                "apiVersion": "shoal.dev/v1alpha1",
                "kind": "InferenceModel",
                "metadata": {"name": "cold"},
                "spec": {"pool": "cpu"},
            },
        ).raise_for_status()
    http_port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "KUBECONFIG": str(helm_cluster.kubeconfigs[ROUTER_SA]),
    }
    router = subprocess.Popen(
        [SHOAL, "router", "run", "--namespace", NAMESPACE, "--host", "127.0.0.1",
         "--http-port", str(http_port), "--grpc-port", "-1", "--metrics-port", "-1",
         "--scaler-port", str(free_port()), "--router-service", f"{RELEASE}-router"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{http_port}"

        def listening() -> bool:
            try:
                return httpx.get(f"{base}/v2/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return router.poll() is not None  # exited: the assertion below shows why

        wait_for(listening, 60, what="router listening")
        assert router.poll() is None, router.communicate()[0]
        # A cold model: held, the router asks the operator to place it, then the deadline.
        body = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}
        answer = httpx.post(
            f"{base}/v2/models/cold/infer", json=body, headers={"X-Shoal-Timeout": "1"}, timeout=30
        )
        assert answer.status_code == 503, answer.text
        wait_for(
            lambda: any(e["verb"] == "patch" for e in helm_cluster.requests_of(ROUTER_SA)),
            30, what="the router's ask (a patch of the InferenceModel)",
        )  # fmt: skip
    finally:
        router.send_signal(signal.SIGTERM)
        output = router.communicate(timeout=30)[0]
    assert router.returncode == 0, output
    events = helm_cluster.requests_of(ROUTER_SA)
    assert not refused(events), f"calls the chart's rules refused: {refused(events)}"
    with cluster.http() as http:
        role = next(
            o for o in chart_release if o["kind"] == "Role" and o["metadata"]["name"] == ROUTER_SA
        )
        rules = read_back(http, role)["rules"]
    used, allowed = called(events), granted(rules)
    assert not used - allowed, f"called without a rule: {_format(used - allowed)}"
    assert not allowed - used, f"granted, never called: {_format(allowed - used)}"
