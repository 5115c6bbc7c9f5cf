"""The operator's Prometheus metrics (prometheus_client, default registry).

Updated from the fleet driver's events (record_driver_event: loads, unloads, evictions, load
latency) and handlers.py (models per
replica, reconcile errors); served by `shoal operator run --metrics-port`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shoal.fleet.driver import DriverEvent

LOADS = Counter("shoal_operator_loads", "Model entries loaded on a replica", ["replica"])
LOAD_FAILURES = Counter(
    "shoal_operator_load_failures", "Model entry loads Triton refused or lost", ["replica"]
)
UNLOADS = Counter("shoal_operator_unloads", "Model entries unloaded from a replica", ["replica"])
EVICTIONS = Counter(
    "shoal_operator_evictions", "Model entries evicted to make room for another", ["replica"]
)
LOAD_SECONDS = Histogram(
    "shoal_operator_load_seconds",
    "Time to load one model entry (every step and the ensemble) on a replica",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
MODELS_PER_REPLICA = Gauge(
    "shoal_operator_models_per_replica", "Model entries loaded on a replica", ["pool", "replica"]
)
RECONCILE_ERRORS = Counter(
    "shoal_operator_reconcile_errors", "Reconciliations that ended in an error", ["kind", "reason"]
)


def record_driver_event(event: DriverEvent) -> None:
    """The placer's `on_event` callback: the fleet driver knows nothing of Prometheus."""
    if event.kind == "loaded":
        LOADS.labels(replica=event.replica).inc()
        LOAD_SECONDS.observe(event.seconds)
    elif event.kind in ("load_failed", "load_timeout"):
        LOAD_FAILURES.labels(replica=event.replica).inc()
    elif event.kind == "evicted":
        EVICTIONS.labels(replica=event.replica).inc()
        UNLOADS.labels(replica=event.replica).inc()
    elif event.kind == "removed":
        UNLOADS.labels(replica=event.replica).inc()
