"""Three real router replicas over one emulated hub, sharing one tenant's tokens-per-minute
limit through the budget exchange; used by `test_limits_replicas.py` and
`bench/router_limits.py`.

- `Platform.start`: the hub emulator (the operator tier's `ValidatingEmulator`), acme's
  Tenant with `tokensPerMinute`, its key Secret, a ModelDeployment whose status names one
  `FakeWorker`, and three `Router`s, each over its own `HubSource`, each with its own replica
  name (three routers in one process would otherwise share one, and so one Lease).
- Every admission is recorded at the source: each router's data plane admits through a
  `Recorder` that keeps the limiter's own window entry (its time is the admission instant on
  the limiter's clock; its amount is the reservation until the request settles, then the
  settled usage). `Ledger.worst_window` is the most any window of the limiter's length holds,
  over all three routers: what the global limit promises to bound.
- `Load`: an open-loop gRPC client per router at a fixed rate (requests with a small
  `max_tokens`), counting admitted and refused.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "operator"):
    if str(extra) not in sys.path:
        sys.path.append(str(extra))

from fake_worker import FakeWorker  # noqa: E402

import tramontane_router.server as server_module  # noqa: E402
from conftest import ACME_KEY, KEYS_NS, cluster, secret, tenant  # noqa: E402
from operator_harness import Cluster, Clusters  # noqa: E402
from tramontane_kube import (  # noqa: E402
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_router.hub import HubSource  # noqa: E402
from tramontane_router.limits.window import Entry  # noqa: E402
from tramontane_router.server import Router, RouterSettings  # noqa: E402
from tramontane_workers.contract import inference_pb2 as pb  # noqa: E402
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc  # noqa: E402

NS = "tramontane-system"
NAMES = ("a", "b", "c")
SKEW = {"a": 0.80, "b": 0.15, "c": 0.05}
__all__ = ["ACME_KEY", "KEYS_NS", "NS", "Cluster"]


@dataclass
class Ledger:
    """Every admission of every router: (router, the limiter's window entry)."""

    entries: list[tuple[str, Entry]] = field(default_factory=list)

    def add(self, router: str, entry: Entry) -> None:
        self.entries.append((router, entry))

    def between(self, start: float, end: float, router: str | None = None) -> list[Entry]:
        return [e for r, e in self.entries
                if start <= e.at < end and (router is None or r == router)]  # fmt: skip

    def admitted(self, start: float, end: float, router: str | None = None) -> float:
        return sum(e.amount for e in self.between(start, end, router))

    def worst_window(self, window_s: float, start: float = 0.0, end: float = float("inf")) -> float:
        """The most any window (t - window_s, t] holds, for admissions at or after `start`
        and before `end` (windows ending at an admission: the sum only grows at one)."""
        xs = sorted((e.at, e.amount) for _, e in self.entries if start <= e.at < end)
        times = [t for t, _ in xs]
        prefix = [0.0]
        for _, amount in xs:
            prefix.append(prefix[-1] + amount)
        worst = 0.0
        for j, t in enumerate(times):
            first = bisect.bisect_right(times, t - window_s)
            worst = max(worst, prefix[j + 1] - prefix[first])
        return worst


class _RecordedPermit:
    def __init__(self, permit: Any) -> None:
        self._permit = permit
        self.reserved = getattr(permit, "reserved", None)

    def settle(self, usage: pb.Usage | None) -> None:
        self._permit.settle(usage)


class Recorder:
    """The data plane's `Limits`: the router's own limiter, recording each admission."""

    def __init__(self, name: str, inner: Any, ledger: Ledger) -> None:
        self.name, self.inner, self.ledger = name, inner, ledger

    async def admit(self, tenant: Any, route: Any, request: Any, deadline: float) -> Any:
        permit = await self.inner.admit(tenant, route, request, deadline)
        entry = getattr(permit, "_tokens", None)
        if entry is not None:  # the limiter's own window entry, settled in place
            self.ledger.add(self.name, entry)
        return _RecordedPermit(permit)


@contextlib.contextmanager
def replica_names(names: Iterator[str]) -> Iterator[None]:
    """Routers built meanwhile take their replica name from `names` (in one process,
    `replica_name()` gives every router started in the same second the same name)."""
    saved = server_module.__dict__["replica_name"]
    setattr(server_module, "replica_name", lambda: next(names))  # noqa: B010
    try:
        yield
    finally:
        setattr(server_module, "replica_name", saved)  # noqa: B010


def model_deployment(address: str) -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "acme-ml"},
        "spec": {
            "model": {"name": "tiny", "source": "file:///models/tiny"},
            "runtime": {"engine": "transformers"},
        },
    }


@dataclass
class Platform:
    clusters: Clusters
    api: KubeClient
    worker: FakeWorker
    routers: dict[str, Router]
    ledger: Ledger
    limit: int
    window_s: float
    interval_s: float
    lease_s: int
    drained: set[str] = field(default_factory=set)

    @property
    def hub(self) -> Cluster:
        return self.clusters.hub

    @classmethod
    async def start(
        cls,
        *,
        limit: int = 600,
        window_s: float = 4.0,
        interval_s: float = 0.2,
        lease_s: int = 1,
        worker_delay_s: float = 0.0,
    ) -> Platform:
        clusters = await Clusters.start("hub", [], kuberay_on_hub=False)
        api = KubeClient("test", ClusterConfig(server=clusters.hub.url), attempts=1)
        worker = await FakeWorker("west", delay_s=worker_delay_s).start()
        await api.create(SECRET, secret("acme-key", ACME_KEY))
        await api.create(TENANT, tenant("acme", ["acme-ml"], ["acme-key"], tokensPerMinute=limit))
        await api.create(COMPUTECLUSTER, cluster("west", "westeurope"))
        await api.create(MODELDEPLOYMENT, model_deployment(worker.address))
        status = {"phase": "Ready", "clusters": [
            {"name": "west", "endpoint": worker.address, "readyReplicas": 1, "desiredReplicas": 1}
        ]}  # fmt: skip
        await api.patch(MODELDEPLOYMENT, "acme-ml", "chat", {"status": status},
                        subresource="status")  # fmt: skip
        ledger = Ledger()
        routers: dict[str, Router] = {}
        settings = RouterSettings(
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            drain_grace_s=2.0,
            stats_interval_s=0,
            budget_namespace=NS,
            budget_interval_s=interval_s,
            budget_lease_s=lease_s,
            limits_window_s=window_s,
        )
        with replica_names(iter(NAMES)):
            for name in NAMES:
                router = Router(HubSource(ClusterConfig(server=clusters.hub.url)), settings)
                assert router.usage.replica == name
                await router.start()
                router.plane.limits = Recorder(name, router.limiter, ledger)
                routers[name] = router
        return cls(clusters, api, worker, routers, ledger, limit, window_s, interval_s, lease_s)

    def cap(self, name: str) -> float:
        return self.routers[name].limiter._caps.get(("acme", "tokens"), 0.0)

    def caps(self) -> dict[str, float]:
        return {n: self.cap(n) for n in NAMES}

    async def drain(self, name: str) -> None:
        self.drained.add(name)
        await self.routers[name].drain()

    async def close(self) -> None:
        for name, router in self.routers.items():
            if name not in self.drained:
                await router.drain()
        await self.worker.stop()
        await self.api.close()
        await self.clusters.close()


@dataclass
class Load:
    """Open-loop load on one router: `rate` requests a second, each `max_tokens` small."""

    router: Router
    rate: float
    key: str = ACME_KEY
    max_tokens: int = 4
    text: str = "hi"
    ok: int = 0
    refused: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _calls: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def _one(self, stub: Any) -> None:
        request = pb.ChatRequest(
            model="tiny",
            messages=[pb.Message(role="user", content=self.text)],
            max_tokens=self.max_tokens,
        )
        started = time.monotonic()
        try:
            await stub.Chat(request, metadata=(("authorization", f"Bearer {self.key}"),),
                            timeout=10)  # fmt: skip
            self.ok += 1
            self.latencies.append(time.monotonic() - started)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.refused += 1
            else:
                self.failed += 1

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.router.grpc_port}") as channel:
            stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
            period = 1.0 / self.rate
            next_at = time.monotonic()
            try:
                while True:
                    call = asyncio.create_task(self._one(stub))
                    self._calls.add(call)
                    call.add_done_callback(self._calls.discard)
                    next_at += period
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                for call in list(self._calls):
                    call.cancel()
                await asyncio.gather(*self._calls, return_exceptions=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def skewed(platform: Platform, total_rate: float) -> dict[str, Load]:
    """80/15/5 of `total_rate` requests a second across the three routers, started."""
    return {n: Load(platform.routers[n], total_rate * SKEW[n]).start() for n in NAMES}
