"""ModelDeployment under faults: a member cluster goes away, API errors, a killed operator."""

from __future__ import annotations

import asyncio
from typing import Any

from manifests import AKS, NS, ONPREM, model_deployment
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay, OperatorRun, eventually
from test_modeldeployment_lifecycle import condition, is_ready, rayservice, stored_md
from tramontane_kube import MODELDEPLOYMENT, KubeClient
from tramontane_local.kube_emulator import Fault

CCS = "tramontane.dev/v1alpha1/computeclusters"


def all_rayservices(clusters: Clusters) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, rs) for c in clusters.all for rs in c.emulator.stored_all(RAYSERVICES)]


def cc_phase(clusters: Clusters, name: str) -> str | None:
    cc = clusters.hub.emulator.stored(CCS, None, name) or {}
    phase: str | None = (cc.get("status") or {}).get("phase")
    return phase


async def test_member_down_degrades_a_pinned_deployment(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: is_ready(clusters))
    assert cc_phase(clusters, AKS) == "Ready"

    await clusters[AKS].stop()
    await eventually(lambda: cc_phase(clusters, AKS) == "Unreachable")
    await eventually(
        lambda: (condition(stored_md(clusters), "Degraded") or {}).get("status") == "True"
    )
    md = stored_md(clusters)
    assert condition(md, "Degraded")["reason"] == "ClusterUnreachable"  # type: ignore[index]
    assert md["status"]["phase"] == "Degraded"
    assert md["status"]["clusters"][0]["state"] == "Unreachable"

    await clusters[AKS].start()
    await eventually(lambda: cc_phase(clusters, AKS) == "Ready")
    await eventually(lambda: is_ready(clusters))
    assert len(all_rayservices(clusters)) == 1


async def test_failover_moves_the_pool_and_leaves_no_duplicate(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    manifest = model_deployment(placement={"clusters": [AKS, ONPREM], "strategy": "Failover"})
    await api.create(MODELDEPLOYMENT, manifest)
    await eventually(lambda: is_ready(clusters))
    assert [name for name, _ in all_rayservices(clusters)] == [AKS]

    await clusters[AKS].stop()
    await eventually(lambda: rayservice(clusters, ONPREM) is not None)
    await eventually(
        lambda: is_ready(clusters) and stored_md(clusters)["status"]["clusterNames"] == ONPREM
    )
    md = stored_md(clusters)
    assert md["status"]["lastFailoverTime"]
    events = clusters.hub.emulator.stored_all("v1/events")
    assert any(e.get("reason") == "FailedOver" and e.get("type") == "Warning" for e in events)

    # The stale pool is still in the stopped cluster; once it answers, it is removed.
    assert rayservice(clusters, AKS) is not None
    await clusters[AKS].start()
    await eventually(lambda: rayservice(clusters, AKS) is None)
    assert [name for name, _ in all_rayservices(clusters)] == [ONPREM]
    assert is_ready(clusters)


async def test_failover_when_kuberay_reports_the_pool_failed(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    manifest = model_deployment(placement={"clusters": [AKS, ONPREM], "strategy": "Failover"})
    await api.create(MODELDEPLOYMENT, manifest)
    await eventually(lambda: is_ready(clusters))
    kuberay.failing.add(AKS)
    await eventually(lambda: rayservice(clusters, ONPREM) is not None)
    await eventually(lambda: rayservice(clusters, AKS) is None)
    await eventually(lambda: is_ready(clusters))


async def test_conflicts_and_server_errors_converge_without_duplicates(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    aks = clusters[AKS].emulator
    rs_path = f"/namespaces/{NS}/rayservices"
    aks.faults += [
        Fault("POST", rs_path, status=409, times=1),  # "already exists" (and yet it does not)
        Fault("POST", rs_path, status=500, times=4),  # more than one call's retries
    ]
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: is_ready(clusters), timeout_s=20)
    assert [f.hits for f in aks.faults] == [1, 4]

    patch_faults = [Fault("PATCH", f"{rs_path}/chat", status=500, times=5)]
    aks.faults += patch_faults
    await api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": {"scaling": {"replicas": 3}}})
    await eventually(lambda: stored_md(clusters)["status"].get("readyReplicas") == 3, timeout_s=20)
    assert patch_faults[0].hits == 5
    assert [name for name, _ in all_rayservices(clusters)] == [AKS]


async def test_operator_killed_between_child_create_and_status_write(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    stall = asyncio.Event()
    status_writes = Fault("PATCH", "/modeldeployments/chat/status", status=503, times=1000)
    status_writes.stall = stall
    clusters.hub.emulator.faults.append(status_writes)
    await api.create(MODELDEPLOYMENT, model_deployment())
    created = await eventually(lambda: rayservice(clusters, AKS))
    await eventually(lambda: status_writes.hits > 0)  # the status write is in flight
    await operator.kill()
    assert "status" not in stored_md(clusters) or not stored_md(clusters)["status"].get("clusters")
    clusters.hub.emulator.faults.remove(status_writes)
    stall.set()

    await operator.start()
    await eventually(lambda: is_ready(clusters))
    assert [name for name, _ in all_rayservices(clusters)] == [AKS]
    rs = rayservice(clusters, AKS)
    assert rs is not None and rs["metadata"]["uid"] == created["metadata"]["uid"]


async def test_delete_waits_for_an_unreachable_member(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: is_ready(clusters))
    await clusters[AKS].stop()
    await eventually(lambda: cc_phase(clusters, AKS) == "Unreachable")
    await api.delete(MODELDEPLOYMENT, NS, "chat")
    await asyncio.sleep(1.0)
    md = clusters.hub.emulator.stored("tramontane.dev/v1alpha1/modeldeployments", NS, "chat")
    assert md is not None and "tramontane.dev/cleanup" in md["metadata"]["finalizers"]
    await clusters[AKS].start()
    await eventually(
        lambda: (
            clusters.hub.emulator.stored("tramontane.dev/v1alpha1/modeldeployments", NS, "chat")
            is None
        )
    )
    assert all_rayservices(clusters) == []
