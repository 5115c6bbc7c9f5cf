"""`shoal operator run`: start kopf with shoal's handlers and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)


def run_operator(
    namespaces: list[str],
    all_namespaces: bool,
    metrics_port: int,
    drift_interval_s: float | None,
    standalone: bool,
) -> int:
    if drift_interval_s is not None:
        # Read by shoal.operator.settings when the handlers are imported (kopf timers need
        # their interval at registration).
        os.environ["SHOAL_OPERATOR_DRIFT_INTERVAL_S"] = str(drift_interval_s)
    import kopf
    from prometheus_client import start_http_server

    import shoal.operator.handlers  # noqa: F401  (registers the handlers)

    if metrics_port:
        start_http_server(metrics_port)
        log.info("metrics on :%d/metrics", metrics_port)
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            namespaces=namespaces,
            clusterwide=all_namespaces,
        )
    )
    return 0
