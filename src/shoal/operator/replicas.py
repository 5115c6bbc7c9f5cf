"""A pool's replicas, as the pool Service's Endpoints list them.

Used by the model handlers (handlers.py) to find where to load. A replica is named after its pod
(the address's targetRef) so that a restarted container keeps its identity; an address without a
targetRef is named by ip:port.
"""

from __future__ import annotations

from typing import Any

from shoal.fleet.replica import Replica
from shoal.operator.resources import GRPC_PORT, HTTP_PORT, METRICS_PORT


def replicas_from_endpoints(endpoints: dict[str, Any] | None) -> list[Replica]:
    """The ready replicas in an Endpoints object (not-ready addresses are skipped)."""
    replicas: dict[str, Replica] = {}
    for subset in (endpoints or {}).get("subsets") or []:
        ports = {p.get("name"): p["port"] for p in subset.get("ports") or []}
        http = ports.get("http", HTTP_PORT if not ports else None)
        if http is None:
            continue
        metrics = ports.get("metrics", METRICS_PORT if not ports else None)
        grpc = ports.get("grpc", GRPC_PORT if not ports else None)
        for address in subset.get("addresses") or []:
            target = (address.get("targetRef") or {}).get("name")
            name = target or f"{address['ip']}:{http}"
            replicas[name] = Replica(
                name, address["ip"], int(http), metrics and int(metrics), grpc and int(grpc)
            )
    return sorted(replicas.values())
