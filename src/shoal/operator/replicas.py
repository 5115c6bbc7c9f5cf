"""A pool's replicas, as the pool Service's Endpoints list them.

Used by the model handlers (handlers.py) to find where to load. A replica is named after its pod
(the address's targetRef) so that a restarted container keeps its identity; an address without a
targetRef is named by ip:port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.operator.resources import HTTP_PORT, METRICS_PORT


@dataclass(frozen=True, order=True)
class Replica:
    name: str  # pod name, or ip:port
    host: str
    http_port: int
    metrics_port: int | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        return f"http://{self.host}:{self.metrics_port}/metrics"


def replicas_from_endpoints(endpoints: dict[str, Any] | None) -> list[Replica]:
    """The ready replicas in an Endpoints object (not-ready addresses are skipped)."""
    replicas: dict[str, Replica] = {}
    for subset in (endpoints or {}).get("subsets") or []:
        ports = {p.get("name"): p["port"] for p in subset.get("ports") or []}
        http = ports.get("http", HTTP_PORT if not ports else None)
        if http is None:
            continue
        metrics = ports.get("metrics", METRICS_PORT if not ports else None)
        for address in subset.get("addresses") or []:
            target = (address.get("targetRef") or {}).get("name")
            name = target or f"{address['ip']}:{http}"
            replicas[name] = Replica(name, address["ip"], int(http), metrics and int(metrics))
    return sorted(replicas.values())
