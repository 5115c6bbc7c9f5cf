"""The router's Prometheus metrics, on their own registry (one per Router, so several routers
in one process, as in tests, do not collide) and served on the metrics port."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

HOLD_OUTCOMES = ("dispatched", "deadline", "overflow", "cancelled", "failed")
RETRY_REASONS = ("unreachable", "replica_left", "model_missing")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HOLD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True)
class ModelMetrics:
    """One model's label children, resolved once: `labels()` costs tens of microseconds."""

    held: Any
    in_flight: Any
    upstream_seconds: Any


class RouterMetrics:
    def __init__(self) -> None:
        self._by_model: dict[str, ModelMetrics] = {}
        self.registry = CollectorRegistry()
        self.held = Gauge(
            "shoal_router_requests_held",
            "Requests waiting for their model to be ready",
            ["model"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "shoal_router_requests_in_flight",
            "Requests sent to a replica, not yet answered",
            ["model"],
            registry=self.registry,
        )
        self.hold_seconds = Histogram(
            "shoal_router_hold_seconds",
            "Time requests spent held, by how the hold ended",
            ["model", "outcome"],
            buckets=HOLD_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "shoal_router_upstream_seconds",
            "Time from sending to a replica to its answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "shoal_router_retries",
            "Requests sent again, by reason",
            ["model", "reason"],
            registry=self.registry,
        )
        self.placement_requests = Counter(
            "shoal_router_placement_requests",
            "Times the router asked for a model to be placed",
            ["model"],
            registry=self.registry,
        )

    def model(self, model: str) -> ModelMetrics:
        children = self._by_model.get(model)
        if children is None:
            children = self._by_model[model] = ModelMetrics(
                self.held.labels(model),
                self.in_flight.labels(model),
                self.upstream_seconds.labels(model),
            )
        return children

    def serve(self, port: int, host: str = "0.0.0.0") -> WSGIServer:
        """Serve /metrics from a thread; the caller shuts the returned server down (port 0: its
        `server_port` is the one picked)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
