"""`shoal router run`: the router in front of known Triton replicas (static routes). In a
cluster the chart runs it with the Kubernetes placement source; `shoal serve` embeds it."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from urllib.parse import urlsplit

from shoal.router.placement_view import DEFAULT_MAX_HOLD_S
from shoal.router.settings import RouterSettings

DEFAULTS = RouterSettings()


def register(subparsers: argparse._SubParsersAction) -> None:
    router = subparsers.add_parser("router", help="the KServe v2 / OpenAI front door")
    commands = router.add_subparsers(dest="router_command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="route requests to known Triton replicas",
        description="Route KServe v2 (HTTP, gRPC) and OpenAI-style requests to Triton replicas "
        "where the model is ready; hold requests for a model that is not ready yet.",
    )
    run.add_argument(
        "--route", action="append", default=[], metavar="MODEL=URL[,grpc=HOST:PORT]",
        help="a model and one replica serving it (repeat for more replicas and models), e.g. "
        "minilm=http://10.0.0.5:8000,grpc=10.0.0.5:8001",
    )  # fmt: skip
    run.add_argument(
        "--repository", type=Path,
        help="route every shoal entry of this model repository (manifests enable /v1 endpoints) "
        "to the --replica URLs",
    )  # fmt: skip
    run.add_argument(
        "--replica", action="append", default=[], metavar="URL[,grpc=HOST:PORT]",
        help="a Triton replica serving --repository (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "--namespace", metavar="NS",
        help="cluster mode: route the InferenceModels of this namespace (watched; asks the "
        "operator to place cold models) and serve KEDA's external scaler; see "
        "docs/router-cluster.md",
    )  # fmt: skip
    run.add_argument(
        "--scaler-port", type=int, default=8003,
        help="cluster mode: KEDA's external scaler (gRPC) port; -1: off",
    )  # fmt: skip
    run.add_argument(
        "--router-service", default=os.environ.get("SHOAL_ROUTER_SERVICE"), metavar="NAME",
        help="cluster mode: the routers' Service; the scaler sums the demand of its other "
        "addresses (default: $SHOAL_ROUTER_SERVICE; none: this router's demand alone)",
    )  # fmt: skip
    run.add_argument("--host", default=DEFAULTS.host, help="address to listen on")
    run.add_argument(
        "--http-port", type=int, default=DEFAULTS.http_port, help="KServe v2 and /v1 HTTP; 0: pick"
    )
    run.add_argument("--grpc-port", type=int, default=DEFAULTS.grpc_port, help="0: pick; -1: off")
    run.add_argument("--metrics-port", type=int, default=DEFAULTS.metrics_port, help="-1: off")
    run.add_argument("--workers", type=int, default=1, help="router processes on the same ports")
    run.add_argument(
        "--max-body-bytes", type=int, default=DEFAULTS.max_body_bytes,
        help="largest HTTP request body",
    )  # fmt: skip
    run.add_argument(
        "--max-grpc-message-bytes", type=int, default=DEFAULTS.max_grpc_message_bytes,
        help="largest gRPC message, either way",
    )  # fmt: skip
    run.add_argument(
        "--max-held-per-model", type=int, default=DEFAULTS.max_held_per_model,
        help="requests held for one model while it is not ready; more are refused (503)",
    )  # fmt: skip
    run.add_argument(
        "--max-hold-seconds", type=float, default=DEFAULT_MAX_HOLD_S,
        help="hold a request this long for its model when the client sends no timeout",
    )  # fmt: skip
    run.add_argument(
        "--event-loop", default="asyncio", choices=["asyncio", "uvloop", "auto"],
        help="uvloop (if installed) measured no faster per core here "
        "(benchmarks/router_overhead.py); auto: uvloop where installed",
    )  # fmt: skip
    run.add_argument("--probe-interval", type=float, default=2.0, help="readiness probe, seconds")
    run.add_argument(
        "--restricted-api-header", default=DEFAULTS.restricted_api_header,
        help="Triton's restricted-API header name: a client's copy is dropped",
    )  # fmt: skip
    run.set_defaults(func=run_router)


def parse_replica(text: str):
    """`http://host:port[,grpc=host:port]` -> Replica; UserError naming the flag's form."""
    from shoal.cli import UserError
    from shoal.fleet.replica import Replica

    url, *options = text.split(",")
    parts = urlsplit(url)
    grpc_port = None
    try:
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError
        for option in options:
            key, _, value = option.partition("=")
            host, _, port = value.rpartition(":")
            if key != "grpc" or not port:
                raise ValueError
            grpc_port = int(port)
    except ValueError:
        raise UserError(
            f"replica {text!r} is not http://HOST:PORT[,grpc=HOST:PORT] "
            "(e.g. http://10.0.0.5:8000,grpc=10.0.0.5:8001)"
        ) from None
    return Replica(
        f"{parts.hostname}:{parts.port}", parts.hostname, parts.port, grpc_port=grpc_port
    )


def static_routes(args: argparse.Namespace) -> list:
    from shoal.cli import UserError
    from shoal.router.static_source import StaticRoute, routes_from_repository

    replicas_by_model: dict[str, list] = {}
    for text in args.route:
        model, sep, replica = text.partition("=")
        if not sep or not model:
            raise UserError(f"--route {text!r} is not MODEL=http://HOST:PORT[,grpc=HOST:PORT]")
        replicas_by_model.setdefault(model, []).append(parse_replica(replica))
    routes = [
        StaticRoute(model, tuple(replicas), max_hold_s=args.max_hold_seconds)
        for model, replicas in replicas_by_model.items()
    ]
    if args.repository is not None:
        if not args.replica:
            raise UserError("--repository needs at least one --replica URL serving it")
        replicas = [parse_replica(text) for text in args.replica]
        try:
            routes += routes_from_repository(args.repository, replicas, args.max_hold_seconds)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if not routes:
        raise UserError("no routes: give --route MODEL=URL, or --repository DIR with --replica URL")
    return routes


def run_router(args: argparse.Namespace) -> int:
    from shoal.cli import UserError
    from shoal.router.server import run_workers
    from shoal.router.static_source import StaticPlacement

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    try:
        settings = RouterSettings(
            host=args.host,
            http_port=args.http_port,
            grpc_port=None if args.grpc_port < 0 else args.grpc_port,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            max_body_bytes=args.max_body_bytes,
            max_grpc_message_bytes=args.max_grpc_message_bytes,
            max_held_per_model=args.max_held_per_model,
            restricted_api_header=args.restricted_api_header,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.namespace:
        return run_cluster_router(args, settings)
    routes = tuple(static_routes(args))
    ensure_ports_free(settings)
    make_source = functools.partial(StaticPlacement, routes, probe_interval_s=args.probe_interval)
    return run_workers(args.workers, make_source, settings, args.event_loop)


def ensure_ports_free(settings: RouterSettings) -> None:
    """Before any worker starts: a taken port is one line naming it and the option to change.
    (In cluster mode the router has its pod's ports to itself.)"""
    from shoal.cli import UserError
    from shoal.runtime.ports import PortTaken, check_free, taken_message

    ports = {
        "http": settings.http_port,
        "grpc": settings.grpc_port or 0,
        "metrics": settings.metrics_port or 0,
    }
    try:
        check_free(settings.host, ports)
    except PortTaken as taken:
        raise UserError(taken_message(taken, f"--{taken.role}-port")) from None


def run_cluster_router(args: argparse.Namespace, settings: RouterSettings) -> int:
    import asyncio

    from kubernetes_asyncio.config import ConfigException

    from shoal.cli import UserError
    from shoal.router.cluster import ClusterOptions, serve_cluster

    if args.route or args.replica:
        raise UserError(
            "--namespace routes the namespace's InferenceModels: drop --route/--replica "
            "(--repository may name a mounted copy of the model repository, for /v1 endpoints)"
        )
    if args.workers != 1 and args.scaler_port >= 0:
        raise UserError(
            "--workers must be 1 with the KEDA scaler on (each worker counts only its own "
            "requests): scale routers by pods, or turn the scaler off with --scaler-port -1"
        )
    options = ClusterOptions(
        namespace=args.namespace,
        scaler_port=None if args.scaler_port < 0 else args.scaler_port,
        router_service=args.router_service,
        pod_name=os.environ.get("POD_NAME") or os.environ.get("HOSTNAME"),
        repository=args.repository,
    )
    try:
        asyncio.run(serve_cluster(options, settings))
    except ConfigException as exc:
        raise UserError(
            f"no Kubernetes credentials: {exc}; in a pod, give the router a service account; "
            "elsewhere set $KUBECONFIG"
        ) from None
    except (TimeoutError, OSError) as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0
