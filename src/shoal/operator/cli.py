"""`shoal operator ...`: run the operator, print or write the CRDs."""

from __future__ import annotations

import argparse
import sys

from shoal.errors import UserError
from shoal.operator import defaults
from shoal.runtime.ports import port_number


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this component's subcommands to `shoal`."""
    parser = subparsers.add_parser("operator", help="the Kubernetes operator (InferencePool/Model)")
    commands = parser.add_subparsers(dest="operator_command", required=True, metavar="SUBCOMMAND")

    run = commands.add_parser("run", help="run the operator against the current kube context")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument(
        "--metrics-port",
        type=port_number,
        default=defaults.METRICS_PORT,
        help=f"Prometheus /metrics port (0: off; default {defaults.METRICS_PORT})",
    )
    run.add_argument(
        "--drift-interval",
        metavar="SECONDS",
        default=None,
        help=f"seconds between drift checks (default {defaults.DRIFT_INTERVAL_S:g})",
    )
    run.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: do not wait for another running operator (only when none runs)",
    )
    run.set_defaults(func=_run)

    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions as YAML")
    crds.add_argument(  # a developer's step (regenerating the package's files): out of help
        "--write", action="store_true", help=argparse.SUPPRESS
    )
    crds.set_defaults(func=_crds)


def _crds(args: argparse.Namespace) -> int:
    from shoal.operator import crds

    if args.write:
        for path in crds.write_shipped_files():
            print(path)
        return 0
    sys.stdout.write("---\n".join(crds.render(crd) for crd in crds.all_crds()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from shoal.operator.main import run_operator

    if not args.namespace and not args.all_namespaces:
        raise UserError("say where to watch: --namespace NAME (repeatable) or --all-namespaces")
    return run_operator(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        drift_interval=args.drift_interval,
        standalone=args.standalone,
    )
