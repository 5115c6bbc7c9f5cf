"""`shoal router run --namespace NS`: the router in a cluster. Placement from the namespace's
InferenceModels and Endpoints (shoal.router.kube_placement), and KEDA's external scaler on its
own port (shoal.router.keda_scaler), summing demand over the other routers of `router_service`.

One process per pod: the scaler reports this process's held and in-flight requests, so several
workers on one pod would each see part of the demand (scale routers by pods instead).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from shoal.router import kube_placement
from shoal.router.keda_scaler import KedaScalerServer
from shoal.router.server import RouterServer
from shoal.router.settings import RouterSettings

log = logging.getLogger(__name__)

SCALER_PORT = 8003
SCALER_PORT_NAME = "scaler"  # the router Service's port for KEDA (peers are found by it)


@dataclass(frozen=True)
class ClusterOptions:
    namespace: str
    scaler_port: int | None = SCALER_PORT  # None: no KEDA scaler
    router_service: str | None = None  # the routers' Service: its other addresses are peers
    pod_name: str | None = None  # this router's pod (left out of the peers)
    repository: Path | None = None  # the model repository, mounted: manifests for /v1 endpoints


async def serve_cluster(options: ClusterOptions, settings: RouterSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    source = await kube_placement.connect(options.namespace, repository=options.repository)
    server = scaler = None
    try:
        await source.start()
        server = await RouterServer(source, settings).start()
        if options.scaler_port is not None:
            peers = None
            if options.router_service:
                peers = functools.partial(
                    source.peers, options.router_service, SCALER_PORT_NAME, options.pod_name
                )
            scaler = KedaScalerServer(
                server.router,
                port=options.scaler_port,
                host=settings.host,
                namespace=options.namespace,
                peers=peers,
            )
            await scaler.start()
        log.info(
            "router for namespace %s: HTTP %s, gRPC %s, KEDA scaler %s",
            options.namespace, server.http_port, server.grpc_port, options.scaler_port or "off",
        )  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        if scaler is not None:
            await scaler.stop()
        if server is not None:
            await server.stop()
        await source.close()
