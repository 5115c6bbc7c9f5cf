"""Real Helm for the chart's tests (PyPI `helm-sdkpy`: the Helm v4 library; scripts/test.sh
installs it), and an API server started with `--authorization-mode=RBAC` and an audit log, where
the chart is installed and the operator and router run as the chart's ServiceAccounts.

helm-sdkpy has no `template` action: a chart is rendered by installing it (the API server also
validates every object) and the objects are read from the release's manifest and from the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.kube import KubeCluster, _write_kubeconfig, running_cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shoal"
# The release the RBAC tests install: its ServiceAccounts get tokens when the server starts.
RELEASE, NAMESPACE = "shoal", "shoal-system"
OPERATOR_SA, ROUTER_SA = f"{RELEASE}-operator", f"{RELEASE}-router"

# Every request of a service account, at Metadata level (verb, resource, namespace, status code);
# nothing else is logged.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def helm():  # noqa: ANN201  (the module, imported on first use)
    try:
        import helm_sdkpy
    except ImportError:
        pytest.fail(
            "helm-sdkpy is not installed: `pip install --ignore-requires-python helm-sdkpy cffi` "
            "(scripts/test.sh does; its metadata asks for Python 3.12 but it runs on 3.11)"
        )
    return helm_sdkpy


def _config(cluster: KubeCluster, namespace: str):  # noqa: ANN202
    return helm().Configuration(namespace=namespace, kubeconfig=str(cluster.kubeconfig))


def lint(chart: Path = CHART) -> dict[str, Any]:
    return asyncio.run(helm().Lint(helm().Configuration()).run(str(chart)))


def manifest_objects(release: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects a release rendered (its `manifest`), CRDs excluded (Helm keeps those apart)."""
    return [doc for doc in yaml.safe_load_all(release.get("manifest") or "") if doc]


def install(
    cluster: KubeCluster, release: str, namespace: str, values: dict[str, Any]
) -> list[dict[str, Any]]:
    action = helm().Install(_config(cluster, namespace))
    result = asyncio.run(
        action.run(release, str(CHART), values=values, create_namespace=True, wait=False)
    )
    return manifest_objects(result)


def upgrade(
    cluster: KubeCluster, release: str, namespace: str, values: dict[str, Any]
) -> list[dict[str, Any]]:
    action = helm().Upgrade(_config(cluster, namespace))
    return manifest_objects(asyncio.run(action.run(release, str(CHART), values=values, wait=False)))


def uninstall(cluster: KubeCluster, release: str, namespace: str) -> None:
    asyncio.run(helm().Uninstall(_config(cluster, namespace)).run(release, wait=False))


def _plural(http: httpx.Client, api_version: str, kind: str) -> str:
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    resources = http.get(path).raise_for_status().json()["resources"]
    return next(r["name"] for r in resources if r["kind"] == kind and "/" not in r["name"])


def object_path(http: httpx.Client, obj: dict[str, Any]) -> str:
    api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = _plural(http, api_version, kind)
    if meta.get("namespace"):
        return f"{base}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
    return f"{base}/{plural}/{meta['name']}"


def read_back(http: httpx.Client, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The object as the API server stores it (None: it is not there)."""
    response = http.get(object_path(http, obj))
    if response.status_code == 404:
        return None
    return response.raise_for_status().json()


@dataclass(frozen=True)
class RbacCluster:
    """An RBAC-enforcing API server; `kubeconfigs[sa]` authenticates as that ServiceAccount of
    NAMESPACE; `audit_log` holds every request service accounts made."""

    cluster: KubeCluster
    kubeconfigs: dict[str, Path]
    audit_log: Path

    def user(self, service_account: str) -> str:
        return f"system:serviceaccount:{NAMESPACE}:{service_account}"

    def requests_of(self, service_account: str) -> list[dict[str, Any]]:
        """The audit events (ResponseComplete) of that ServiceAccount, in order."""
        user = self.user(service_account)
        events = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            if event.get("stage") == "ResponseComplete" and event["user"]["username"] == user:
                events.append(event)
        return events


@contextlib.contextmanager
def rbac_cluster(
    service_accounts: tuple[str, ...] = (OPERATOR_SA, ROUTER_SA),
) -> Iterator[RbacCluster]:
    """Tokens for the chart's ServiceAccounts are in the server's token file from the start (a
    token file is read once), so the identities exist before the chart creates the accounts;
    what they may do comes only from the RBAC objects the chart installs."""
    tokens = {sa: secrets.token_hex(16) for sa in service_accounts}
    lines = [
        f"{token},system:serviceaccount:{NAMESPACE}:{sa},{sa},"
        f'"system:serviceaccounts,system:serviceaccounts:{NAMESPACE}"'
        for sa, token in tokens.items()
    ]
    with tempfile.TemporaryDirectory(prefix="shoal-rbac-") as scratch:
        workdir = Path(scratch)
        policy = workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        audit_log = workdir / "audit.log"
        args = [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",  # each event is written before the response goes out
        ]
        with running_cluster("RBAC", extra_args=args, extra_tokens=lines) as cluster:
            kubeconfigs = {}
            for sa, token in tokens.items():
                path = workdir / f"{sa}.kubeconfig"
                _write_kubeconfig(path, cluster.server, cluster.ca_path, token)
                kubeconfigs[sa] = path
            yield RbacCluster(cluster, kubeconfigs, audit_log)
