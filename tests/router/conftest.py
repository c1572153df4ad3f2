"""Fixtures of the router tier: manifests as a platform team writes them, fake workers (small
real gRPC servers), and routers on loopback built from a `StaticSource` over those manifests.

Two tenants: `acme` (namespace `acme-ml`) and `globex` (namespace `globex-ml`), each with a key
in a Secret and a ModelDeployment serving `tiny` (acme's also serves the adapter `support`),
placed on two member clusters in two regions.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).parents[1] / "operator"))  # the hub emulator

from fake_worker import FakeWorker
from tests.rbac import grants_every_request

from operator_harness import Cluster, Clusters
from tramontane_kube import ClusterConfig, KubeClient
from tramontane_router.dataplane import Limits
from tramontane_router.hub import HubSource
from tramontane_router.server import Router, RouterSettings
from tramontane_router.sources import StaticSource

ACME_KEY = "acme-key-0123456789abcdef"
GLOBEX_KEY = "globex-key-0123456789abcdef"
KEYS_NS = "tramontane-keys"


@pytest.fixture(scope="session", autouse=True)
def chart_rbac_grants_every_request() -> Iterator[None]:
    """Every request the router sends to the hub in this session is granted by the chart's
    roles for its ServiceAccount (tests/rbac.py)."""
    yield from grants_every_request()


def secret(name: str, value: str, namespace: str = KEYS_NS, key: str = "api-key") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(value.encode()).decode()},
    }


def tenant(name: str, namespaces: list[str], secrets: list[str], **quotas: Any) -> dict[str, Any]:
    """A Tenant; `quotas` in the API's camelCase (`requestsPerMinute=3`)."""
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "namespaces": namespaces,
            "apiKeySecretRefs": [{"namespace": KEYS_NS, "name": s} for s in secrets],
            **({"quotas": quotas} if quotas else {}),
        },
    }


def cluster(name: str, region: str, cloud: str = "azure") -> dict[str, Any]:
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ComputeCluster",
        "metadata": {"name": name},
        "spec": {
            "cloud": cloud,
            "region": region,
            "connection": {"inCluster": True},
            "gpus": {"H100": 8},
            "ingress": {"grpcEndpoint": "placeholder.example.com:443", "tls": False},
        },
    }


def deployment(
    name: str,
    namespace: str,
    pools: dict[str, str],
    *,
    model: str = "tiny",
    adapters: list[str] | None = None,
    ready: int = 1,
) -> dict[str, Any]:
    """A ModelDeployment with the status the operator publishes: `pools` cluster -> address."""
    return {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": model, "source": "file:///models/tiny"},
            "runtime": {"engine": "transformers"},
            "adapters": [{"name": a, "uri": f"file:///adapters/{a}"} for a in adapters or []],
        },
        "status": {
            "phase": "Ready",
            "adapters": adapters or None,
            "clusters": [
                {"name": c, "endpoint": addr, "readyReplicas": ready, "desiredReplicas": ready}
                for c, addr in pools.items()
            ],
        },
    }


def platform(west: FakeWorker, north: FakeWorker, globex: FakeWorker) -> list[dict[str, Any]]:
    """The standard objects: two tenants, two clusters; acme's model on both clusters."""
    return [
        secret("acme-key", ACME_KEY),
        secret("globex-key", GLOBEX_KEY),
        tenant("acme", ["acme-ml"], ["acme-key"]),
        tenant("globex", ["globex-ml"], ["globex-key"]),
        cluster("west", "westeurope"),
        cluster("north", "northeurope"),
        deployment(
            "chat",
            "acme-ml",
            {"west": west.address, "north": north.address},
            adapters=["support"],
        ),
        deployment("chat", "globex-ml", {"west": globex.address}, model="tiny"),
    ]


@pytest.fixture
async def workers() -> AsyncIterator[Callable[..., Awaitable[FakeWorker]]]:
    started: list[FakeWorker] = []

    async def make(name: str, **kw: Any) -> FakeWorker:
        worker = await FakeWorker(name, **kw).start()
        started.append(worker)
        return worker

    yield make
    for w in started:
        await w.stop()


@pytest.fixture
async def routers() -> AsyncIterator[Callable[..., Awaitable[Router]]]:
    """Start routers on loopback (free ports) over a source; drained at the end. Keyword
    arguments are `RouterSettings` fields, except `limits` (the data plane's `Limits`)."""
    started: list[Router] = []

    async def make(source: Any, *, limits: Limits | None = None, **settings: Any) -> Router:
        settings.setdefault("grpc_listen", "127.0.0.1:0")
        settings.setdefault("http_listen", "127.0.0.1:0")
        settings.setdefault("drain_grace_s", 2.0)
        settings.setdefault("stats_interval_s", 0)
        if not hasattr(source, "subscribe"):
            source = StaticSource(source)
        router = Router(source, RouterSettings(**settings), limits=limits)
        await router.start()
        started.append(router)
        return router

    yield make
    for r in started:
        await r.drain()


# ------------------------------------------------------ an emulated hub (HubSource tests)
@pytest.fixture
async def hub() -> AsyncIterator[Cluster]:
    made = await Clusters.start("hub", [], kuberay_on_hub=False)
    try:
        yield made.hub
        assert made.violations() == [], "writes a real API server would reject"
    finally:
        await made.close()


@pytest.fixture
async def api(hub: Cluster) -> AsyncIterator[KubeClient]:
    client = KubeClient("test", ClusterConfig(server=hub.url), attempts=1)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def sources(hub: Cluster) -> AsyncIterator[Callable[..., Awaitable[HubSource]]]:
    made: list[HubSource] = []

    async def make(**kw: Any) -> HubSource:
        source = HubSource(ClusterConfig(server=hub.url), **kw)
        made.append(source)
        await source.start()
        return source

    yield make
    for s in made:
        await s.stop()
