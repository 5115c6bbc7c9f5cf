"""`shoal serve`, `shoal quickstart`, `shoal embed`, `shoal rerank`: the local runtime from the
shell. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from shoal.fleet.placement import DEFAULT_POLICY, POLICIES  # pure, stdlib only: light
from shoal.runtime.client import DEFAULT_URLS  # light: numpy and tritonclient load in the calls
from shoal.runtime.ports import (  # stdlib only: light
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    PortTaken,
    port_number,
    taken_message,
)

log = logging.getLogger(__name__)

# The ports `shoal serve` listens on for clients, by role: (option, default, what is served).
PORT_OPTIONS = {
    "http": ("--http-port", HTTP_PORT, "HTTP (KServe v2, /v1)"),
    "grpc": ("--grpc-port", GRPC_PORT, "gRPC (KServe v2)"),
    "metrics": ("--metrics-port", METRICS_PORT, "Prometheus /metrics"),
}


def _quiet_http_logs() -> None:
    # httpx logs every control request at INFO: noise next to the runtime's own messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this component's subcommands to `shoal`."""
    serve = subparsers.add_parser(
        "serve", help="serve a model repository on a local Triton (explicit mode, memory budget)"
    )
    serve.add_argument("repository", help="model repository folder (made by `shoal export`)")
    for option, port, served in PORT_OPTIONS.values():
        serve.add_argument(
            option,
            type=port_number,
            default=port,
            metavar="PORT",
            help=f"{served} port: the router's, or Triton's with --no-router; 0: any free port",
        )
    serve.add_argument(
        "--no-router",
        action="store_true",
        help="no router in front: clients talk to Triton on the ports above and load cold models "
        "themselves (by default the router holds a request for a cold model while it loads, and "
        "Triton listens on free loopback ports behind it)",
    )
    serve.add_argument(
        "--load",
        action="append",
        metavar="NAME",
        help="load these models at start (repeatable); default: every model that fits the budget",
    )
    serve.add_argument("--pin", action="append", default=[], metavar="NAME", help="never evict")
    serve.add_argument(
        "--memory-budget", metavar="SIZE", help="e.g. 2GiB; default: no limit (load everything)"
    )
    serve.add_argument(
        "--policy", default=DEFAULT_POLICY, choices=list(POLICIES), help="eviction policy"
    )
    serve.add_argument(
        "--load-timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="deadline of one model load (default: 60 s plus 60 s per GiB of the entry)",
    )
    serve.add_argument("--log-file", help="Triton's log (default: a temporary file)")
    serve.set_defaults(func=run_serve)

    quickstart = subparsers.add_parser(
        "quickstart", help="export MiniLM once, serve it, query it over HTTP and gRPC (offline)"
    )
    quickstart.add_argument(
        "--repository", help="cache repository (default: ~/.cache/shoal/quickstart-repository)"
    )
    quickstart.set_defaults(func=run_quickstart_command)

    for name, helptext in (
        ("embed", "embed texts with a served model"),
        ("rerank", "score documents against a query with a served reranker"),
    ):
        parser = subparsers.add_parser(name, help=helptext)
        parser.add_argument("model")
        if name == "rerank":
            parser.add_argument("query")
            parser.add_argument("texts", nargs="+", metavar="DOC")
        else:
            parser.add_argument("texts", nargs="+", metavar="TEXT")
            parser.add_argument("--text-type", choices=["query", "document"])
        parser.add_argument(
            "--url",
            help="the server: `shoal serve` or a Triton (default: "
            f"{DEFAULT_URLS['http']} for HTTP, {DEFAULT_URLS['grpc']} for gRPC)",
        )
        parser.add_argument(
            "--protocol", choices=["http", "grpc"], default="http", help="(default: http)"
        )
        parser.add_argument(
            "--load-timeout", type=float, default=120.0, help="seconds to wait for a cold model"
        )
        parser.set_defaults(func=run_embed if name == "embed" else run_rerank)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


# -- serve ----------------------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    from shoal.errors import UserError, local_folder_problem  # noqa: PLC0415
    from shoal.fleet.errors import FleetError  # noqa: PLC0415
    from shoal.fleet.placement import make_policy  # noqa: PLC0415
    from shoal.fleet.triton_control import TritonControlError  # noqa: PLC0415
    from shoal.router.settings import RouterSettings  # noqa: PLC0415
    from shoal.runtime.controller import PlacementRefused, UnknownModel  # noqa: PLC0415
    from shoal.runtime.installation import TritonNotInstalled, locate_triton  # noqa: PLC0415
    from shoal.runtime.serve import (  # noqa: PLC0415
        LocalServing,
        RepositoryProblem,
        TritonCrashLoop,
    )
    from shoal.runtime.triton import LOOPBACK, TritonStartError  # noqa: PLC0415
    from shoal.sizes import parse_size  # noqa: PLC0415

    _quiet_http_logs()
    problem = local_folder_problem(args.repository, "repository", must_exist=True)
    if problem:
        raise UserError(problem)
    try:
        locate_triton()  # before anything starts: a missing Triton is one line, not a traceback
    except TritonNotInstalled as exc:
        raise UserError(str(exc)) from exc
    try:
        budget = parse_size(args.memory_budget) if args.memory_budget else None
        # 0 asks for any free port: None to Triton, 0 to the router.
        ports = {
            "http_port": args.http_port or None,
            "grpc_port": args.grpc_port or None,
            "metrics_port": args.metrics_port or None,
        }
        router = None
        if not args.no_router:  # the router takes the ports; Triton's are free loopback ones
            router = RouterSettings(
                host=LOOPBACK,
                http_port=args.http_port,
                grpc_port=args.grpc_port,
                metrics_port=args.metrics_port,
            )
            ports = {}
        serving = LocalServing(
            args.repository,
            budget_bytes=budget,
            policy=make_policy(args.policy),
            pinned=frozenset(args.pin),
            log_path=args.log_file,
            load_timeout_s=args.load_timeout,
            router=router,
            **ports,
        )
    except (ValueError, RepositoryProblem) as exc:
        raise UserError(str(exc)) from exc

    async def serve(stop: asyncio.Event) -> None:
        async with serving:
            assert serving.server and serving.controller
            loaded = await serving.controller.start(args.load)
            server = serving.server
            print(
                _banner(serving) + "\n"
                f"  loaded: {', '.join(loaded) or 'none'}; models: "
                f"{', '.join(serving.manifests)}\n  log: {server.log_path}\n"
                "  Ctrl-C to stop",
                flush=True,
            )
            await serving.run_until(stop)
            log.info("stopping")

    async def main() -> None:
        # Ctrl-C cancels whatever runs (a load, a wait for memory to be released): stopping
        # never waits for the control loop's current step, only for Triton's own exit.
        stop = asyncio.Event()
        task = asyncio.create_task(serve(stop))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: (stop.set(), task.cancel()))
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except PortTaken as exc:
        raise UserError(taken_message(exc, PORT_OPTIONS[exc.role][0])) from None
    except (UnknownModel, PlacementRefused, FleetError) as exc:
        raise UserError(str(exc)) from exc
    except TritonCrashLoop as exc:
        print(f"shoal serve: error: {exc}", file=sys.stderr)
        return 1
    except (TritonStartError, TritonControlError, TritonNotInstalled) as exc:
        raise UserError(f"{exc}") from exc
    return 0


def _banner(serving) -> str:  # noqa: ANN001
    server = serving.server
    triton = f"HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}"
    if serving.router is None:
        return f"shoal serve: Triton on {triton}"
    router = serving.router
    metrics = router.metrics_port
    return (
        f"shoal serve: router on HTTP http://{router.http_address}  gRPC {router.grpc_address}"
        + (f"  metrics http://127.0.0.1:{metrics}/metrics" if metrics else "")
        + f"\n  Triton (private, behind the router) on {triton}"
    )


# -- quickstart -----------------------------------------------------------------------------------
def run_quickstart_command(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from shoal.errors import UserError, local_folder_problem  # noqa: PLC0415
    from shoal.runtime.installation import TritonNotInstalled  # noqa: PLC0415
    from shoal.runtime.quickstart import QuickstartError, run_quickstart  # noqa: PLC0415

    _quiet_http_logs()
    if args.repository:
        problem = local_folder_problem(args.repository, "--repository", must_exist=False)
        if problem:
            raise UserError(problem)
    try:
        run_quickstart(Path(args.repository) if args.repository else None)
    except (QuickstartError, TritonNotInstalled) as exc:
        raise UserError(str(exc)) from exc
    return 0


# -- embed / rerank -------------------------------------------------------------------------------
def _ready_client(args: argparse.Namespace):  # noqa: ANN202
    """A client for a ready model. Through a router (`shoal serve`) a cold model is loaded while
    the request is held; straight to Triton it is loaded through the repository API (a `shoal
    serve --no-router` control loop then keeps the budget)."""
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    from shoal.errors import UserError  # noqa: PLC0415
    from shoal.runtime import client as triton_client  # noqa: PLC0415

    url = args.url or triton_client.DEFAULT_URLS[args.protocol]
    client = triton_client.connect(url, args.protocol)
    try:
        triton_client.ensure_live(args.url, args.protocol)
        if not client.is_model_ready(args.model):
            try:
                known = [m["name"] for m in _index(client)]
            except InferenceServerException:
                # A router (`shoal serve` runs one): no repository API; it holds the request
                # while the model loads, and names an unknown model in its answer.
                return client
            if args.model not in known:
                raise UserError(
                    f"no model named {args.model!r} at {url}; models: "
                    f"{', '.join(n for n in known if '__' not in n) or 'none'}"
                )
            log.info("%s is not loaded: loading it", args.model)
            client.load_model(args.model)
            triton_client.wait_until_ready(client, args.model, args.load_timeout)
    except InferenceServerException as exc:
        client.close()
        raise UserError(f"model {args.model!r} at {url}: {exc.message()}") from exc
    except triton_client.ModelCallError as exc:
        client.close()
        raise UserError(str(exc)) from exc
    except Exception as exc:
        client.close()
        if isinstance(exc, UserError):
            raise
        raise UserError(f"the server at {url} stopped answering: {exc}") from exc
    return client


def _call_model(args: argparse.Namespace, call):  # noqa: ANN001, ANN202
    """`call(client)` on a ready client; the server's refusals and a lost server as one line."""
    from shoal.errors import UserError  # noqa: PLC0415
    from shoal.runtime import client as triton_client  # noqa: PLC0415

    client = _ready_client(args)
    try:
        return call(client)
    except triton_client.ModelCallError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:  # HTTP: the connection broke mid-call
        url = args.url or triton_client.DEFAULT_URLS[args.protocol]
        raise UserError(f"the server at {url} stopped answering: {exc}") from exc
    finally:
        client.close()


def _index(client) -> list[dict]:  # noqa: ANN001
    index = client.get_model_repository_index()
    if not isinstance(index, list):  # gRPC answers a protobuf message
        index = [{"name": m.name} for m in index.models]
    return index


def run_embed(args: argparse.Namespace) -> int:
    from shoal.runtime import client as triton_client  # noqa: PLC0415

    vectors = _call_model(
        args,
        lambda client: triton_client.embed(
            client, args.model, args.texts, protocol=args.protocol, text_type=args.text_type
        ),
    )
    for text, vector in zip(args.texts, vectors, strict=True):
        json.dump({"text": text, "embedding": [round(float(v), 6) for v in vector]}, sys.stdout)
        sys.stdout.write("\n")
    return 0


def run_rerank(args: argparse.Namespace) -> int:
    from shoal.runtime import client as triton_client  # noqa: PLC0415

    scores = _call_model(
        args,
        lambda client: triton_client.rerank(
            client, args.model, args.query, args.texts, protocol=args.protocol
        ),
    )
    ranked = sorted(zip(scores.tolist(), args.texts, strict=True), key=lambda p: -p[0])
    for score, text in ranked:
        print(f"{score:10.4f}  {text}")
    return 0
