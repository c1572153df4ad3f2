"""Canary rollouts end to end: the real operator (against the emulated hub and members, with
the fake KubeRay) and a real router (its `HubSource` and budget exchange on the same hub) in
front of a real gRPC worker. The operator steps a healthy canary to 100 % from the figures the
router publishes in its Lease; a failing canary is cut to 0 % by the router at once (no client
request fails) and rolled back by the operator (status, Event); the pin rolls back by hand."""

from __future__ import annotations

import asyncio
import base64
import collections
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

sys.path.append(str(Path(__file__).parents[1] / "router"))

from fake_worker import FakeWorker

from manifests import AKS, NS, SYSTEM_NS, model_deployment, operator_settings
from operator_harness import (
    RAYSERVICES,
    Clusters,
    FakeKubeRay,
    OperatorRun,
    eventually,
)
from tramontane_api.v1alpha1.modeldeployment import adapter_version
from tramontane_kube import (
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_router.hub import HubSource
from tramontane_router.server import Router, RouterSettings
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

MDS = "tramontane.dev/v1alpha1/modeldeployments"
KEY = "team-key-0123456789abcdef"
V1_URI, V2_URI = "file:///adapters/support-v1", "file:///adapters/support-v2"
V1, V2 = adapter_version(V1_URI), adapter_version(V2_URI)
ROLLOUT = {
    "steps": [{"weight": 20, "holdSeconds": 1}, {"weight": 50, "holdSeconds": 1}],
    "analysis": {"minRequests": 5, "maxErrorRate": 0.05},
}


@dataclass
class Stack:
    clusters: Clusters
    api: KubeClient
    worker: FakeWorker
    router: Router

    def versions(self) -> dict[str, tuple[str, int]]:
        md = self.clusters.hub.emulator.stored(MDS, NS, "chat") or {}
        rows = (md.get("status") or {}).get("adapterVersions") or []
        return {v["version"]: (v["state"], v["weight"]) for r in rows for v in r["versions"]}

    def row(self) -> dict[str, Any]:
        md = self.clusters.hub.emulator.stored(MDS, NS, "chat") or {}
        return dict(((md.get("status") or {}).get("adapterVersions") or [{}])[0])

    def served_adapters(self) -> list[str]:
        rs = self.clusters[AKS].emulator.stored(RAYSERVICES, NS, "chat") or {}
        doc = yaml.safe_load(rs.get("spec", {}).get("serveConfigV2") or "{}") or {}
        apps = doc.get("applications") or [{}]
        return sorted(a["name"] for a in apps[0].get("args", {}).get("engine", {})["adapters"])

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.clusters.hub.emulator.stored_all("v1/events")
                if e.get("reason") == reason]  # fmt: skip

    async def set_adapter(self, **adapter: Any) -> None:
        spec = {"adapters": [{"name": "support", "rollout": ROLLOUT, **adapter}]}
        await self.api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": spec})


@pytest.fixture
async def stack(clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay) -> AsyncIterator[Stack]:
    worker = await FakeWorker(
        "w", models=("mistral-7b",),
        adapters=(f"support@{V1}", f"support@{V2}"),
    ).start()  # fmt: skip
    # The pools' ingress is the worker; the tenant's key is in a Secret the router reads.
    await api.patch(COMPUTECLUSTER, "", AKS,
                    {"spec": {"ingress": {"grpcEndpoint": worker.address, "tls": False}}})  # fmt: skip
    await api.create(SECRET, {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "team-key", "namespace": SYSTEM_NS},
        "data": {"api-key": base64.b64encode(KEY.encode()).decode()},
    })  # fmt: skip
    await api.create(TENANT, {
        "apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team"},
        "spec": {"namespaces": [NS],
                 "apiKeySecretRefs": [{"namespace": SYSTEM_NS, "name": "team-key"}]},
    })  # fmt: skip
    op = OperatorRun(operator_settings(clusters.hub.url, router_namespace=SYSTEM_NS))
    await op.start()
    router = Router(
        HubSource(ClusterConfig(server=clusters.hub.url)),
        RouterSettings(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", drain_grace_s=1.0,
                       stats_interval_s=0, budget_namespace=SYSTEM_NS,
                       budget_interval_s=0.5, budget_lease_s=2),
    )  # fmt: skip
    await router.start()
    try:
        yield Stack(clusters, api, worker, router)
    finally:
        await router.drain()
        await op.stop()
        await worker.stop()


class Load:
    """Steady unary load on `tiny:support` through the router; every outcome kept."""

    def __init__(self, router: Router, rate: float = 40.0) -> None:
        self.router, self.rate = router, rate
        self.ok = 0
        self.failed: list[str] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.router.grpc_port}") as ch:
            stub = pb_grpc.InferenceStub(ch)  # type: ignore[no-untyped-call]
            calls: set[asyncio.Task[None]] = set()

            async def one() -> None:
                request = pb.ChatRequest(model="mistral-7b:support",
                                         messages=[pb.Message(role="user", content="hi")])  # fmt: skip
                try:
                    await stub.Chat(request, metadata=(("authorization", f"Bearer {KEY}"),),
                                    timeout=10)  # fmt: skip
                    self.ok += 1
                except grpc.aio.AioRpcError as err:
                    self.failed.append(f"{err.code().name}: {err.details()}")

            try:
                while True:
                    task = asyncio.create_task(one())
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                    await asyncio.sleep(1 / self.rate)
            finally:
                await asyncio.gather(*calls, return_exceptions=True)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def start_canary(stack: Stack) -> None:
    await stack.api.create(MODELDEPLOYMENT, model_deployment(
        adapters=[{"name": "support", "uri": V1_URI, "rollout": ROLLOUT}]))  # fmt: skip
    await eventually(lambda: stack.versions() == {V1: ("Stable", 100)})
    await eventually(lambda: "mistral-7b:support" in {m.id for m in _models(stack)})
    await stack.set_adapter(uri=V2_URI)
    await eventually(lambda: stack.versions() == {V2: ("Canary", 20), V1: ("Stable", 80)})


def _models(stack: Stack) -> list[Any]:
    table = stack.router.source.table
    tenant = table.tenants.get("team")
    return table.models(tenant) if tenant is not None else []


async def test_a_healthy_canary_is_stepped_to_100_by_the_operator(stack: Stack) -> None:
    await start_canary(stack)
    served_at_start = stack.served_adapters()
    assert served_at_start == sorted([f"support@{V1}", f"support@{V2}"])
    load = Load(stack.router)
    await eventually(lambda: stack.versions().get(V2) == ("Canary", 50), timeout_s=20)
    assert stack.served_adapters() == served_at_start  # weights never touch the pools
    await eventually(lambda: stack.versions() == {V2: ("Stable", 100), V1: ("Previous", 0)},
                     timeout_s=20)  # fmt: skip
    await asyncio.sleep(1.0)  # the router takes the new table
    before = collections.Counter(c.request.model for c in stack.worker.calls)
    await asyncio.sleep(1.0)
    await load.stop()
    assert load.failed == []
    after = collections.Counter(c.request.model for c in stack.worker.calls) - before
    assert set(after) == {f"support@{V2}"}  # promoted: all traffic on v2
    assert stack.events("CanaryStepped") and stack.events("AdapterPromoted")
    assert stack.served_adapters() == served_at_start


async def test_a_failing_canary_is_rolled_back_with_no_failed_request(stack: Stack) -> None:
    await start_canary(stack)
    load = Load(stack.router)
    await asyncio.sleep(1.0)
    stack.worker.failing[f"support@{V2}"] = grpc.StatusCode.INTERNAL
    injected = time.monotonic()
    await eventually(lambda: stack.versions().get(V2) == ("RolledBack", 0), timeout_s=15)
    operator_s = time.monotonic() - injected
    first = stack.worker.failed_at[0]
    last = stack.worker.failed_at[-1]
    await asyncio.sleep(1.0)
    await load.stop()
    print(f"router rollback_s={last - first:.3f} operator status after {operator_s:.2f}s")
    assert load.failed == [], "no client request may fail"
    assert last - first <= 10.0
    assert operator_s <= 10.0
    row = stack.row()
    assert row["lastRollback"]["version"] == V2
    assert "error rate" in row["lastRollback"]["reason"]
    (event,) = stack.events("AdapterRolledBack")
    assert event["type"] == "Warning" and V2 in event["message"]
    # Not rolled out again while the spec still names it.
    await asyncio.sleep(2.0)
    assert stack.versions()[V2] == ("RolledBack", 0)
    # The pin serves it anyway (the manual override), at once.
    stack.worker.failing.clear()
    await stack.set_adapter(uri=V2_URI, version=V2)
    await eventually(lambda: stack.versions() == {V2: ("Stable", 100), V1: ("Previous", 0)})
    # And the pin rolls back by hand: one field.
    await stack.set_adapter(uri=V2_URI, version=V1)
    await eventually(lambda: stack.versions() == {V1: ("Stable", 100), V2: ("Previous", 0)})
