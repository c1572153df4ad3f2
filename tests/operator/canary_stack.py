"""The canary stack: the real operator against the emulated hub and one member (with the fake
KubeRay) and a real router (its `HubSource` and budget exchange on the same hub) in front of a
real gRPC `FakeWorker` standing for the member's Serve ingress; team `team` calls
`mistral-7b:support`, whose two versions the worker serves. Used by `test_canary_rollout.py`
and `bench/canary_rollback.py`.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "router"):
    if str(extra) not in sys.path:
        sys.path.append(str(extra))

from fake_worker import FakeWorker  # noqa: E402

from manifests import (  # noqa: E402
    AKS,
    HUB,
    NS,
    SYSTEM_NS,
    compute_cluster,
    model_deployment,
    operator_settings,
)
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay, OperatorRun  # noqa: E402
from tramontane_api.v1alpha1.modeldeployment import adapter_version  # noqa: E402
from tramontane_kube import (  # noqa: E402
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_router.hub import HubSource  # noqa: E402
from tramontane_router.server import Router, RouterSettings  # noqa: E402
from tramontane_workers.contract import inference_pb2 as pb  # noqa: E402
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc  # noqa: E402

MDS = "tramontane.dev/v1alpha1/modeldeployments"
KEY = "team-key-0123456789abcdef"
V1_URI, V2_URI = "file:///adapters/support-v1", "file:///adapters/support-v2"
V1, V2 = adapter_version(V1_URI), adapter_version(V2_URI)
ROLLOUT: dict[str, Any] = {
    "steps": [{"weight": 20, "holdSeconds": 1}, {"weight": 50, "holdSeconds": 1}],
    "analysis": {"minRequests": 5, "maxErrorRate": 0.05},
}


KEYS_NS = "tramontane-keys"  # tenants' API-key Secrets: the chart's tenants.keyNamespaces


def _secret(name: str, key: str, value: str, namespace: str = SYSTEM_NS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(value.encode()).decode()},
    }


@dataclass
class Stack:
    clusters: Clusters
    api: KubeClient
    kuberay: FakeKubeRay
    operator: OperatorRun
    worker: FakeWorker
    router: Router
    rollout: dict[str, Any] = field(default_factory=lambda: dict(ROLLOUT))

    @classmethod
    async def start(cls, rollout: dict[str, Any] | None = None) -> Stack:
        clusters = await Clusters.start(HUB, [AKS])
        api = KubeClient("test", ClusterConfig(server=clusters.hub.url), attempts=1)
        worker = await FakeWorker(
            "w", models=("mistral-7b",), adapters=(f"support@{V1}", f"support@{V2}")
        ).start()
        await api.create(SECRET, _secret(f"{AKS}-kubeconfig", "kubeconfig",
                                         clusters[AKS].kubeconfig()))  # fmt: skip
        await api.create(COMPUTECLUSTER, compute_cluster(
            HUB, cloud="azure", region="westeurope", connection={"inCluster": True}))  # fmt: skip
        await api.create(COMPUTECLUSTER, compute_cluster(
            AKS, cloud="azure", region="westeurope", gpus={"H100": 8},
            # The pools' ingress is the worker.
            ingress={"grpcEndpoint": worker.address, "tls": False},
            connection={"kubeconfigSecretRef": {"namespace": SYSTEM_NS,
                                                "name": f"{AKS}-kubeconfig"}},
        ))  # fmt: skip
        await api.create(SECRET, _secret("team-key", "api-key", KEY, KEYS_NS))
        await api.create(TENANT, {
            "apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "team"},
            "spec": {"namespaces": [NS],
                     "apiKeySecretRefs": [{"namespace": KEYS_NS, "name": "team-key"}]},
        })  # fmt: skip
        kuberay = FakeKubeRay(clusters.all)
        await kuberay.start()
        op = OperatorRun(operator_settings(clusters.hub.url, router_namespace=SYSTEM_NS))
        await op.start()
        router = Router(
            HubSource(ClusterConfig(server=clusters.hub.url)),
            RouterSettings(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                           drain_grace_s=1.0, stats_interval_s=0, budget_namespace=SYSTEM_NS,
                           budget_interval_s=0.5, budget_lease_s=2),
        )  # fmt: skip
        await router.start()
        return cls(clusters, api, kuberay, op, worker, router, rollout or dict(ROLLOUT))

    async def close(self) -> None:
        await self.router.drain()
        await self.operator.stop()
        await self.kuberay.stop()
        await self.worker.stop()
        await self.api.close()
        await self.clusters.close()

    # ------------------------------------------------------------------- reading
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

    def router_weights(self) -> dict[str, int]:
        """The weights of `support`'s versions in the router's current table."""
        return {
            v.served_as: v.weight
            for ds in self.router.source.table.by_namespace.values()
            for d in ds
            for vs in d.versions.values()
            for v in vs.versions
        }

    def routable(self) -> bool:
        table = self.router.source.table
        tenant = table.tenants.get("team")
        models = table.models(tenant) if tenant is not None else []
        return any(m.id == "mistral-7b:support" and m.ready for m in models)

    # ------------------------------------------------------------------- changing
    async def create(self, uri: str = V1_URI) -> None:
        await self.api.create(MODELDEPLOYMENT, model_deployment(
            adapters=[{"name": "support", "uri": uri, "rollout": self.rollout}]))  # fmt: skip

    async def set_adapter(self, **adapter: Any) -> None:
        spec = {"adapters": [{"name": "support", "rollout": self.rollout, **adapter}]}
        await self.api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": spec})


class Load:
    """Steady unary load on `mistral-7b:support` through the router; every outcome kept."""

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

            loop = asyncio.get_running_loop()
            next_at = loop.time()
            try:
                while True:
                    task = asyncio.create_task(one())
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                    next_at += 1 / self.rate
                    await asyncio.sleep(max(0.0, next_at - loop.time()))
            finally:
                await asyncio.gather(*calls, return_exceptions=True)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
