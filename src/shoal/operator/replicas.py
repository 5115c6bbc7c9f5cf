"""A pool's replicas, as the pool Service's Endpoints list them.

Used by the model handlers to find where to load and to say where a model answers
(`status.replicaAddresses`), and by the router. A replica is named after its pod
(the address's targetRef) so that a restarted container keeps its identity; an address without a
targetRef is named by ip:port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shoal.fleet.replica import Replica
from shoal.operator.resources import GRPC_PORT, HTTP_PORT, METRICS_PORT


def replica_addresses(
    names: Iterable[str], replicas: Iterable[Replica], versions: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """`status.replicaAddresses` of a model READY on `names`: pod, host:port of each and the
    entry version it serves (where known), in the order of `names` (replicas no longer among
    the endpoints have no address and are left out)."""
    by_name = {r.name: r for r in replicas}
    addresses = []
    for name in names:
        replica = by_name.get(name)
        if replica is None:
            continue
        address = {"pod": name, "http": f"{replica.host}:{replica.http_port}"}
        if replica.grpc_target:
            address["grpc"] = replica.grpc_target
        if versions and versions.get(name):
            address["version"] = versions[name]
        addresses.append(address)
    return addresses


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
