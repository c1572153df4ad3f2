"""`tramontane operator run`: run the Kopf operator (what the Helm chart's Deployment starts).

Flags: `--all-namespaces` or `--namespace NS` (repeatable) for ModelDeployments and
FineTuneJobs (ComputeClusters and Tenants are cluster-scoped), `--metrics-port` (Prometheus
`/metrics`, default 9090, 0 disables), `--liveness-port` (Kopf's `/healthz`, default 8080,
0 disables). Environment: `TRAMONTANE_CLUSTER_NAME`, `TRAMONTANE_WORKER_IMAGE` and the others
`OperatorSettings.from_env` documents, `TRAMONTANE_LOCAL_MODE=true` included (the operator then
reads `file://` datasets itself: one machine only, never a shared cluster; docs/trust-model.md).
The hub is the cluster the pod runs in (else $KUBECONFIG).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="Run the operator.",
        description="The Kubernetes operator reconciling tramontane.dev resources.",
    )
    sub = parser.add_subparsers(dest="operator_command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", help="Run the operator until SIGTERM/SIGINT.")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="Watch every namespace (default)."
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="Watch this namespace (repeatable).",
    )
    run.add_argument("--metrics-port", type=_port, default=9090, help="0 disables /metrics.")
    run.add_argument("--liveness-port", type=_port, default=8080, help="0 disables /healthz.")
    run.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    run.set_defaults(func=_run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from exc
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0..65535, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from tramontane_kube import KubeconfigError, LeadershipLost
    from tramontane_operator.main import run
    from tramontane_operator.settings import OperatorSettings

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = OperatorSettings.from_env(
            namespaces=tuple(args.namespace),
            all_namespaces=not args.namespace,
            metrics_port=args.metrics_port or None,
            liveness_port=args.liveness_port or None,
        )
        settings.hub_config()  # fail early, with the reason, when there is no cluster to talk to
        settings.leader_election_config()
    except (ValueError, KubeconfigError, OSError) as exc:
        print(f"tramontane operator: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop_flag=stop)

    try:
        asyncio.run(main())
    except LeadershipLost as exc:
        print(f"tramontane operator: {exc}", file=sys.stderr)
        return 1
    return 0
