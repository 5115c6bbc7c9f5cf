"""One Triton replica as the fleet driver addresses it: a stable name and its ports.

In a cluster the operator builds these from a pool's Endpoints (shoal.operator.replicas); locally
`shoal serve` has one, its own Triton. The router dispatches to the same names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Replica:
    name: str  # pod name, or ip:port
    host: str
    http_port: int
    metrics_port: int | None = None
    grpc_port: int | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str | None:
        return None if self.grpc_port is None else f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        return f"http://{self.host}:{self.metrics_port}/metrics"
