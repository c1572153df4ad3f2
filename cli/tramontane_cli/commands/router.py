"""`tramontane router run`: run the tenant data plane (what the chart's router Deployment starts).

The router serves the Mistral API over HTTP (`--http-listen`, default 0.0.0.0:8080) and
`tramontane.v1.Inference` over gRPC (`--grpc-listen`, default 0.0.0.0:8081). Its routing
table comes from `--source`: `hub` (default) watches the hub's Tenants, key Secrets,
ModelDeployments and ComputeClusters, reached in-cluster or with `--kubeconfig PATH`; one or
more YAML FILEs hold those objects instead (local mode, tests). SIGTERM or SIGINT drains:
`/readyz` turns 503, requests in flight get `--drain-grace-seconds`, then the process exits 0.

Every bad flag value is one line on stderr naming the flag, with exit status 2; a hub that
cannot be listed at start-up is one line naming it, with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn

PROG = "tramontane router run"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class FlagError(Exception):
    """A flag value that cannot be used; the message starts with the flag."""


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (`--flag: problem`) and exit status 2, without usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: {message.removeprefix('argument ')}\n")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "router",
        help="Run the router (the tenants' API endpoint).",
        description="The router: authenticates tenants' requests and routes them to models.",
    )
    sub = parser.add_subparsers(
        dest="router_command", metavar="COMMAND", parser_class=_OneLineParser
    )
    sub.required = True
    run = sub.add_parser(
        "run",
        help="Serve until SIGTERM/SIGINT, then drain.",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    run.add_argument("--grpc-listen", type=_listen, default="0.0.0.0:8081", metavar="HOST:PORT")
    run.add_argument("--http-listen", type=_listen, default="0.0.0.0:8080", metavar="HOST:PORT")
    run.add_argument(
        "--source",
        nargs="+",
        default=["hub"],
        metavar="hub|FILE",
        help="`hub` (default), or YAML manifests of Tenants, Secrets, ModelDeployments "
        "(with status) and ComputeClusters",
    )
    run.add_argument("--kubeconfig", metavar="PATH", help="with --source hub: the hub's config "
                     "(default: the in-cluster service account)")  # fmt: skip
    run.add_argument("--region", type=_name, help="prefer member clusters in this region")
    run.add_argument("--cloud", type=_name, help="then member clusters in this cloud")
    run.add_argument("--tls-cert", metavar="FILE", help="serve both fronts over TLS")
    run.add_argument("--tls-key", metavar="FILE")
    run.add_argument("--backend-ca", metavar="FILE", help="CA of the member clusters' ingress")
    run.add_argument("--max-body-bytes", type=_positive_int, default=4 * 1024 * 1024)
    run.add_argument("--drain-grace-seconds", type=_seconds, default=30.0)
    run.add_argument("--usage-dir", metavar="DIR", help="write per-tenant token usage here")
    run.add_argument(
        "--budget-namespace",
        metavar="NS",
        default=os.environ.get("POD_NAMESPACE"),
        help="hub namespace of the replicas' budget Leases (default: $POD_NAMESPACE, else "
        "the hub credentials' namespace); with --source hub the replicas split each tenant's "
        "global limits there",
    )
    run.add_argument("--metrics-port", type=_port, default=9090, help="0 disables /metrics")
    run.add_argument("--log-level", type=_log_level, default="INFO", help="/".join(LOG_LEVELS))
    run.set_defaults(func=_run)


# ------------------------------------------------------------------- per-flag values
def _listen(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if int(port) > 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0..65535, got {text!r}")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number within 0..65535, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return value


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a name, got an empty string")
    return text.strip()


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.upper()


# ------------------------------------------------------------- checks across flags
def _readable(flag: str, path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FlagError(f"{flag}: no such file: {path!r}")
    if not os.access(p, os.R_OK):
        raise FlagError(f"{flag}: cannot read {path!r}")
    return p


def _check_tls(args: argparse.Namespace) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        given = "--tls-cert" if args.tls_cert else "--tls-key"
        raise FlagError(f"{given}: --tls-cert and --tls-key go together; give both or neither")
    if args.tls_cert is not None:
        cert, key = _readable("--tls-cert", args.tls_cert), _readable("--tls-key", args.tls_key)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as exc:
            raise FlagError(f"--tls-cert/--tls-key: not a certificate and its key: {exc}") from None
    if args.backend_ca is not None:
        ca = _readable("--backend-ca", args.backend_ca)
        try:
            ssl.create_default_context(cafile=str(ca))
        except ssl.SSLError as exc:
            raise FlagError(f"--backend-ca: not a PEM CA bundle: {exc}") from None


def _check_usage_dir(path: str | None) -> None:
    if path is None:
        return
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlagError(f"--usage-dir: cannot create {path!r}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise FlagError(f"--usage-dir: cannot write to {path!r}")


def _check_bind(flag: str, listen: str) -> None:
    """Fail with the flag's name when HOST:PORT cannot be listened on (in use, no such
    address): the servers would otherwise fail later, in their own words."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)  # fmt: skip
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise FlagError(f"{flag}: cannot listen on {listen}: {exc.strerror or exc}") from None


def _source(args: argparse.Namespace) -> Any:
    from tramontane_kube import ClusterConfig, KubeconfigError
    from tramontane_router.hub import HubSource
    from tramontane_router.sources import StaticSource

    if args.source == ["hub"]:
        try:
            if args.kubeconfig is not None:
                config = ClusterConfig.from_kubeconfig_file(
                    _readable("--kubeconfig", args.kubeconfig)
                )
            else:
                config = ClusterConfig.in_cluster()
        except KubeconfigError as exc:
            flag = "--kubeconfig" if args.kubeconfig else "--source hub"
            hint = "" if args.kubeconfig else " (outside a cluster, pass --kubeconfig PATH)"
            raise FlagError(f"{flag}: {exc}{hint}") from None
        except OSError as exc:
            raise FlagError(f"--kubeconfig: cannot read {args.kubeconfig!r}: {exc}") from None
        return HubSource(config)
    if "hub" in args.source:
        raise FlagError("--source: either `hub` or manifest FILEs, not both")
    if args.kubeconfig is not None:
        raise FlagError("--kubeconfig: only with --source hub")
    paths = [_readable("--source", p) for p in args.source]
    import yaml

    try:
        return StaticSource.from_files(paths)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        one_line = " ".join(str(exc).split())
        raise FlagError(f"--source: not YAML manifests: {one_line}") from None


def _settings(args: argparse.Namespace) -> Any:
    from tramontane_router.balancer import BalancerSettings
    from tramontane_router.server import RouterSettings, TlsFiles

    return RouterSettings(
        grpc_listen=args.grpc_listen,
        http_listen=args.http_listen,
        tls=TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None,
        backend_ca_file=args.backend_ca,
        max_body_bytes=args.max_body_bytes,
        drain_grace_s=args.drain_grace_seconds,
        usage_dir=args.usage_dir,
        budget_namespace=args.budget_namespace,
        balancer=BalancerSettings(region=args.region, cloud=args.cloud),
    )


def _start_metrics(port: int) -> None:
    if port == 0:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port)
    except OSError as exc:
        raise FlagError(f"--metrics-port: cannot listen on {port}: {exc.strerror}") from None


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        _check_tls(args)
        _check_usage_dir(args.usage_dir)
        _check_bind("--grpc-listen", args.grpc_listen)
        _check_bind("--http-listen", args.http_listen)
        source = _source(args)
        settings = _settings(args)
        _start_metrics(args.metrics_port)
    except FlagError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    from tramontane_router.hub import HubSyncError
    from tramontane_router.server import Router

    async def main() -> None:
        await Router(source, settings).serve_forever()

    try:
        # uvloop (installed with uvicorn[standard]) cuts the router's CPU per request by
        # about a tenth (bench/router_overhead.py); the standard loop where it is missing.
        try:
            import uvloop

            loop_factory: Any = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvicorn[standard] brings it
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    except HubSyncError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a listener taken between the check and the bind
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0
