"""The router process: the data plane with its gRPC and HTTP fronts in one event loop.

`Router.start()` binds both listeners (port 0 picks a free one; `grpc_port` / `http_port`
say which), `Router.drain()` is what SIGTERM does: the health service turns NOT_SERVING and
`/readyz` 503 so load balancers stop sending, new requests are refused with UNAVAILABLE /
503, requests and streams in flight get `drain_grace_s` to finish, then both servers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn

from tramontane_api.rollouts import ROLLOUTS_ANNOTATION, encode_rollouts

from .backends import Backends, StatsPoller
from .balancer import Balancer, BalancerSettings
from .dataplane import DataPlane, DataPlaneSettings, Limits
from .grpc_api import build_server, set_serving
from .http_api import build_app
from .limits.budgets import LongBudgets
from .limits.exchange import BudgetExchange
from .limits.rates import RateLimiter
from .limits.report import BudgetReporter
from .limits.tokens import warm_up
from .observability import setup_tracing
from .periodic import Periodic
from .probes import Probes
from .sources import RoutingSource
from .table import TenantView
from .usage import UsageLog, replica_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str


@dataclass(frozen=True)
class RouterSettings:
    grpc_listen: str = "0.0.0.0:8081"  # host:port
    http_listen: str = "0.0.0.0:8080"
    tls: TlsFiles | None = None  # serve both fronts over TLS
    backend_ca_file: str | None = None  # roots for TLS to member clusters' ingress
    max_body_bytes: int = 4 * 1024 * 1024
    drain_grace_s: float = 30.0
    stats_interval_s: float = 2.0
    usage_dir: str | None = None
    usage_flush_s: float = 10.0
    # Where the replicas' budget Leases live on the hub (the router's own namespace); with a
    # hub source and no namespace given, the namespace of the hub credentials' context.
    budget_namespace: str | None = None
    budget_interval_s: float = 1.0  # a round of the exchange
    budget_lease_s: int = 10
    canary_check_s: float = 1.0  # how often canaries are judged (0: only after failures)
    limits_window_s: float = 60.0  # "per minute"; shorter only in tests and benchmarks
    budget_status_interval_s: float = 30.0  # Tenant status.tokenBudget, at most this often
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    dataplane: DataPlaneSettings = field(default_factory=DataPlaneSettings)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the router drains both fronts together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Router:
    def __init__(
        self, source: RoutingSource, settings: RouterSettings, *, limits: Limits | None = None
    ) -> None:
        self.source = source
        self.settings = settings
        self.backends = Backends(ca_file=settings.backend_ca_file)
        self.balancer = Balancer(settings.balancer)
        self.usage = UsageLog(
            settings.usage_dir, replica_name(), flush_interval_s=settings.usage_flush_s
        )
        self.budgets = LongBudgets(self.usage)
        self.limiter = RateLimiter(budgets=self.budgets, window_s=settings.limits_window_s)
        self.plane = DataPlane(
            source,
            self.backends,
            self.balancer,
            self.usage,
            limits=limits or self.limiter,
            settings=settings.dataplane,
        )
        self.stats = StatsPoller(
            self.backends,
            self.balancer,
            lambda: [e for ds in source.table.by_namespace.values() for d in ds
                     for e in d.endpoints],
            settings.stats_interval_s,
        )  # fmt: skip
        # Canaries are judged every second (and at once after a failure on one).
        self.canary_checks = Periodic("canary", settings.canary_check_s, self._check_canaries)
        # Canaries with an online check are sent its probe (one task; `probes.py`).
        self.probes = Probes(self.plane)
        self.exchange: BudgetExchange | None = None
        self.reporter: BudgetReporter | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._health = None
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        source.subscribe(self._on_table)

    def _on_table(self, table: object) -> None:
        endpoints = [e for ds in self.source.table.by_namespace.values() for d in ds
                     for e in d.endpoints]  # fmt: skip
        self.balancer.retain({e.key for e in endpoints})
        self._watch_versions()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to close yet
            asyncio.get_running_loop().create_task(
                self.backends.retain({(e.address, e.tls) for e in endpoints})
            )

    def _watch_versions(self) -> None:
        """Hand the canaries of the current table to the data plane's `Canaries`."""
        self.plane.canaries.watch(
            vs
            for ds in self.source.table.by_namespace.values()
            for d in ds
            for vs in d.versions.values()
        )

    async def _check_canaries(self) -> None:
        self.plane.canaries.check()

    def _rollouts_annotation(self) -> dict[str, str]:
        return {ROLLOUTS_ANNOTATION: encode_rollouts(self.plane.canaries.report())}

    async def start(self) -> None:
        cfg = self.settings
        await self.source.start()
        self._watch_versions()
        self.canary_checks.start()
        self.probes.start()
        self._start_hub_tasks()
        server, self._health = build_server(self.plane, max_message_bytes=cfg.max_body_bytes)
        if cfg.tls is not None:
            with open(cfg.tls.key, "rb") as k, open(cfg.tls.cert, "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.grpc_port = server.add_secure_port(cfg.grpc_listen, creds)
        else:
            self.grpc_port = server.add_insecure_port(cfg.grpc_listen)
        if self.grpc_port == 0:
            raise OSError(f"--grpc-listen {cfg.grpc_listen}: cannot bind")
        await server.start()
        self._grpc = server
        await set_serving(self._health, True)

        host, port = _split(cfg.http_listen)
        config = uvicorn.Config(
            build_app(
                self.plane,
                max_body_bytes=cfg.max_body_bytes,
                ready=self._ready,
                token_budget=self._token_budget,
            ),
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(cfg.drain_grace_s),
            ssl_certfile=cfg.tls.cert if cfg.tls else None,
            ssl_keyfile=cfg.tls.key if cfg.tls else None,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(), name="router:http")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises the bind error
                raise OSError(f"--http-listen {cfg.http_listen}: cannot bind")
            await asyncio.sleep(0.01)
        self.http_port = self._http.servers[0].sockets[0].getsockname()[1]
        self.stats.start()
        self.usage.start()
        self.budgets.start()
        # The tokenizer that counts prompts for token limits takes ~2 s to load: not in the
        # first limited request's path.
        self._warm = asyncio.create_task(asyncio.to_thread(warm_up), name="router:tokenizer")
        log.info("router serving gRPC on :%d and HTTP on :%d", self.grpc_port, self.http_port)

    def _start_hub_tasks(self) -> None:
        """With a hub: write budget statuses, and split global limits with the other replicas."""
        client = getattr(self.source, "client", None)
        config = getattr(self.source, "config", None)
        namespace = self.settings.budget_namespace or getattr(config, "default_namespace", None)
        if client is not None and self.usage.directory is not None:
            self.reporter = BudgetReporter(
                client,
                self.budgets,
                lambda: list(self.source.table.tenants.values()),
                interval_s=self.settings.budget_status_interval_s,
            )
            self.reporter.start()
        if client is None or not namespace:
            return  # one replica (local mode, files): every cap is the whole limit
        self.limiter.shared = True
        cfg = self.settings
        self.exchange = BudgetExchange(
            client,
            namespace,
            self.usage.replica,
            self.limiter,
            interval_s=cfg.budget_interval_s,
            lease_duration_s=cfg.budget_lease_s,
            window_s=cfg.limits_window_s,
            annotations=self._rollouts_annotation,
        )
        self.exchange.start()

    def _token_budget(self, tenant: TenantView) -> dict[str, Any] | None:
        """The tenant's `status.tokenBudget` as this replica counts it (None: no budget)."""
        if not self.budgets.limited(tenant):
            return None
        status = self.budgets.status(tenant)
        return status.model_dump(by_alias=True, exclude_none=True)

    def _ready(self) -> bool:
        return not self.plane.draining

    async def drain(self) -> None:
        """Stop taking requests, let those in flight finish (within the grace), stop."""
        if self._stopped.is_set():
            return
        self.plane.draining = True
        log.info("router draining: in-flight requests have %.0fs", self.settings.drain_grace_s)
        if self._health is not None:
            await set_serving(self._health, False)
        grace = self.settings.drain_grace_s
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            stops.append(asyncio.wait_for(asyncio.shield(self._http_task), grace + 5))
        await asyncio.gather(*stops, return_exceptions=True)
        await self.stats.stop()
        await self.canary_checks.stop()
        await self.probes.stop()
        if self.exchange is not None:
            await self.exchange.stop()
        if self.reporter is not None:
            await self.reporter.stop()
        await self.budgets.stop()
        await self.usage.close()
        await self.backends.close()
        await self.source.stop()
        log.info("router stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve_forever(self) -> None:
        """Start, then drain on SIGTERM or SIGINT."""
        setup_tracing()
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.drain()))
        await self.wait_stopped()
