"""`shoal operator run`: check what a person gave, then start kopf with shoal's handlers, the
Prometheus endpoint and peering (one active operator at a time).

Every problem found before kopf starts (a bad interval, a busy port, no kubeconfig, an API server
that does not answer) is a UserError: one line, exit 2, no traceback and no silent retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shoal.errors import UserError
from shoal.operator.defaults import parse_seconds

log = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT_S = 10.0


def run_operator(
    namespaces: list[str],
    all_namespaces: bool,
    metrics_port: int,
    drift_interval: str | None,
    standalone: bool,
) -> int:
    if drift_interval is not None:
        try:
            seconds = parse_seconds("--drift-interval", drift_interval)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        # Read by shoal.operator.settings when the handlers are imported (kopf timers need
        # their interval at registration).
        os.environ["SHOAL_OPERATOR_DRIFT_INTERVAL_S"] = str(seconds)
    import kopf

    import shoal.operator.handlers  # noqa: F401  (registers the handlers)
    from shoal.operator import settings
    from shoal.operator.crds import PEERING_NAME

    settings.check()
    _check_kubeconfig()
    _start_metrics(metrics_port)
    peering_scope = False if standalone else (None if all_namespaces else list(namespaces))
    priority = start_priority()
    active = asyncio.run(_check_api_server(peering_scope, priority))
    # The peering logger says when this operator waits for another ("Pausing operations in
    # favour of ...") and when it takes over.
    logging.getLogger("kopf._core.engines.peering").setLevel(logging.INFO)
    if not standalone:
        where = "cluster-wide" if all_namespaces else f"in {', '.join(namespaces)}"
        log.info(
            "peering %r %s: the earliest started operator acts, later ones wait", PEERING_NAME,
            where,
        )  # fmt: skip
    if active:
        log.warning(
            "another shoal operator is active %s (%s): this one waits until it stops",
            where, ", ".join(active),
        )  # fmt: skip
    asyncio.run(
        kopf.operator(
            standalone=standalone,
            namespaces=namespaces,
            clusterwide=all_namespaces,
            # A peering name makes kopf's peering mandatory: never with --standalone.
            peering_name=None if standalone else PEERING_NAME,
            priority=priority,
            memo=kopf.Memo(peering=not standalone),
        )
    )
    return 0


def start_priority(now_ms: int | None = None) -> int:
    """kopf pauses every operator that sees a peer of higher priority: the earlier an operator
    started, the higher its priority, so a second one waits instead of taking over."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return 10**13 - now_ms


def _check_kubeconfig() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return  # in a pod: its service account
    explicit = os.environ.get("KUBECONFIG")
    paths = [Path(p) for p in explicit.split(os.pathsep) if p] if explicit else []
    paths = paths or [Path.home() / ".kube" / "config"]
    if not any(p.is_file() for p in paths):
        where = f"KUBECONFIG={explicit}" if explicit else str(paths[0])
        raise UserError(
            f"no kubeconfig at {where}: point KUBECONFIG at one (kubectl's), "
            "or run the operator in a pod with a service account"
        )


async def _check_api_server(peering_scope: list[str] | None | bool, priority: int) -> list[str]:
    """The API server answers, and the peering objects exist (created if absent).
    `peering_scope`: namespaces, None for cluster-wide, False for no peering.
    Returns the live operators of higher priority this one will wait for."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.config import ConfigException

    from shoal.operator.crds import PEERING_NAME
    from shoal.operator.kube import KubeApi, PeeringMissing

    try:
        kube = await KubeApi.connect()
    except (ConfigException, OSError, ValueError) as exc:
        raise UserError(f"cannot read the kubeconfig: {exc}") from None
    host = kube.api_client.configuration.host
    try:
        await client.VersionApi(kube.api_client).get_code(_request_timeout=PREFLIGHT_TIMEOUT_S)
        if peering_scope is False:
            return []
        peers = await kube.ensure_peering(PEERING_NAME, peering_scope)
    except PeeringMissing as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # any failure here means the same thing to a person
        raise UserError(
            f"cannot reach the Kubernetes API at {host}: {type(exc).__name__}: {exc}"[:300]
            + "; check the kube context and that the cluster is up"
        ) from None
    finally:
        await kube.close()
    return sorted({pid for pid, peer in peers.items() if _outranks(peer, priority)})


def _outranks(peer: dict[str, Any], priority: int) -> bool:
    """A peer (kopf's record: priority, lifetime, lastseen) that is alive and ranks higher."""
    try:
        seen = datetime.fromisoformat(peer["lastseen"])
        alive = seen + timedelta(seconds=int(peer.get("lifetime", 60))) > datetime.now(tz=UTC)
        return alive and int(peer.get("priority", 0)) > priority
    except (KeyError, TypeError, ValueError):
        return False


def _start_metrics(port: int) -> None:
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port)
    except OSError as exc:
        raise UserError(
            f"--metrics-port {port}: {exc.strerror or exc}; choose a free port, or 0 to turn "
            "metrics off"
        ) from None
    log.info("metrics on :%d/metrics", port)
