"""Test-side helpers for the operator's e2e tests (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from shoal.operator.crds import GROUP, VERSION
from shoal.runtime.triton import TritonServer


class Kube:
    """Test-side API helpers in one namespace (sync httpx; the operator runs in its own thread)."""

    def __init__(self, http: httpx.Client, namespace: str) -> None:
        self.http = http
        self.namespace = namespace

    def _custom(self, plural: str, name: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> httpx.Response:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.http.post(self._custom(plural), json=body)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        response = self.http.get(self._custom(plural, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        self.http.patch(
            self._custom(plural, name),
            json={"spec": spec},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()

    def delete(self, plural: str, name: str) -> None:
        self.http.delete(self._custom(plural, name)).raise_for_status()

    def get_core(self, path: str) -> dict[str, Any] | None:
        response = self.http.get(path.format(ns=self.namespace))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.http.get(f"/api/v1/namespaces/{self.namespace}/events").json()["items"]
        return [e for e in items if e["involvedObject"]["name"] == name]

    def write_endpoints(self, service: str, replicas: dict[str, Any]) -> None:
        """What the endpoints controller would write for ready pods: their IPs (each test
        replica's network-namespace address, `bind_address`) grouped by ports, named after the
        pod. A replica is a TritonServer or anything with bind_address/http_port/metrics_port."""
        by_ports: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
        for pod, server in sorted(replicas.items()):
            ports = (server.http_port, server.metrics_port, getattr(server, "grpc_port", 0))
            by_ports.setdefault(ports, []).append(
                {
                    "ip": server.bind_address,
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": self.namespace},
                }
            )
        subsets = [
            {
                "addresses": addresses,
                "ports": [
                    {"name": "http", "port": http, "protocol": "TCP"},
                    {"name": "metrics", "port": metrics, "protocol": "TCP"},
                    *([{"name": "grpc", "port": grpc, "protocol": "TCP"}] if grpc else []),
                ],
            }
            for (http, metrics, grpc), addresses in sorted(by_ports.items())
        ]
        body = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": service, "namespace": self.namespace},
            "subsets": subsets,
        }
        path = f"/api/v1/namespaces/{self.namespace}/endpoints"
        existing = self.http.get(f"{path}/{service}")
        if existing.status_code == 404:
            self.http.post(path, json=body).raise_for_status()
        else:
            body["metadata"]["resourceVersion"] = existing.json()["metadata"]["resourceVersion"]
            self.http.put(f"{path}/{service}", json=body).raise_for_status()


def pool_spec(repository: Path, memory: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "triton": {"image": "nvcr.io/nvidia/tritonserver:24.10-py3"},
        "storage": {"pvc": {"claimName": "models"}, "localPath": str(repository)},
        "memoryPerReplica": memory,
        "replicas": {"min": 1, "max": 1},
    }
    spec.update(overrides)
    return spec


def infer(server: TritonServer, model: str, text: str = "hello") -> list[float]:
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
    response = httpx.post(f"{server.http_url}/v2/models/{model}/infer", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["outputs"][0]["data"]


def loaded_entries(server: TritonServer) -> set[str]:
    index = httpx.post(f"{server.http_url}/v2/repository/index", json={}, timeout=10).json()
    return {m["name"] for m in index if m.get("state") == "READY"}


def model_status(kube: Kube, name: str) -> dict[str, Any]:
    return (kube.get("inferencemodels", name) or {}).get("status") or {}


def wait_phase(kube: Kube, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    from tests.support.kube import wait_for  # noqa: PLC0415

    return wait_for(
        lambda: (s := model_status(kube, name)).get("phase") == phase and s,
        timeout,
        what=f"{name} phase {phase} (status: {model_status(kube, name)})",
    )


def create_pool(
    kube: Kube,
    repository: Path,
    replicas: dict[str, TritonServer],
    memory: str = "250Mi",
    name: str = "gpu-a",
) -> None:
    """An InferencePool over `repository` whose Endpoints list `replicas` (pod name -> server),
    as the endpoints controller would once the pods are ready."""
    kube.create(
        "inferencepools", "InferencePool", name, pool_spec(repository, memory)
    ).raise_for_status()
    kube.write_endpoints(name, replicas)
