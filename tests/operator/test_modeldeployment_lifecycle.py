"""ModelDeployment end to end against emulated clusters: create, change, move, delete."""

from __future__ import annotations

import asyncio
from typing import Any

from manifests import AKS, HUB, NS, ONPREM, model_deployment, operator_settings
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay, OperatorRun, eventually
from tramontane_kube import MODELDEPLOYMENT, KubeClient

MDS = "tramontane.dev/v1alpha1/modeldeployments"


def stored_md(clusters: Clusters, name: str = "chat") -> dict[str, Any]:
    md = clusters.hub.emulator.stored(MDS, NS, name)
    assert md is not None
    return md


def condition(md: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (md.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def is_ready(clusters: Clusters, name: str = "chat") -> bool:
    cond = condition(stored_md(clusters, name), "Ready")
    return cond is not None and cond["status"] == "True"


def rayservice(clusters: Clusters, cluster: str, name: str = "chat") -> dict[str, Any] | None:
    return clusters[cluster].emulator.stored(RAYSERVICES, NS, name)


async def test_create_reaches_ready_with_valid_children(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(MODELDEPLOYMENT, model_deployment())
    rs = await eventually(lambda: rayservice(clusters, AKS))
    assert rs["metadata"]["labels"]["tramontane.dev/owner-name"] == "chat"
    assert rs["metadata"]["labels"]["tramontane.dev/cluster"] == AKS
    assert "ownerReferences" not in rs["metadata"]  # the parent lives in another cluster
    # The member had no such namespace: the operator created it, and only where it placed.
    namespace = clusters[AKS].emulator.namespaces[NS]
    assert namespace["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tramontane"}
    assert NS not in clusters[ONPREM].emulator.namespaces
    assert rayservice(clusters, ONPREM) is None and rayservice(clusters, HUB) is None

    await eventually(lambda: is_ready(clusters))
    md = stored_md(clusters)
    status = md["status"]
    assert status["phase"] == "Ready"
    assert status["readyReplicas"] == 2 and status["replicas"] == 2
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert status["clusters"] == [
        {
            "name": AKS,
            "rayService": "chat",
            "desiredReplicas": 2,
            "readyReplicas": 2,
            "state": "Ready",
            "endpoint": f"{AKS}.serve.example.com:443",
        }
    ]
    assert "tramontane.dev/cleanup" in md["metadata"]["finalizers"]
    # The operator writes a live ModelDeployment's finalizer and status, nothing else (no
    # Kopf progress or diff-base annotations: each would be one more hub write per object).
    assert not (md["metadata"].get("annotations") or {})

    def events() -> list[dict[str, Any]]:
        return clusters.hub.emulator.stored_all("v1/events")

    # Kopf posts Events from a queue, in order: once Ready's is there, the earlier ones are.
    await eventually(lambda: any(e.get("reason") == "PoolsReady" for e in events()))
    # A healthy start posts no Warning (not Ready while its pool is created is expected).
    assert [e["reason"] for e in events() if e.get("type") == "Warning"] == []
    created = [e for e in events() if e.get("reason") == "Created"]
    assert created and created[0]["message"] == f"RayService chat created in {AKS}"
    involved = created[0]["involvedObject"]
    assert involved["kind"] == "ModelDeployment" and involved["name"] == "chat"
    assert involved["uid"] == md["metadata"]["uid"]


async def test_spec_change_patches_in_place(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: is_ready(clusters))
    created = rayservice(clusters, AKS)
    assert created is not None
    await api.patch(
        MODELDEPLOYMENT,
        NS,
        "chat",
        {
            "spec": {
                "scaling": {"replicas": 3},
                "adapters": [{"name": "support-fr", "uri": "az://adapters/support-fr"}],
                "runtime": {"maxModelLen": 8192},
            }
        },
    )

    def patched() -> dict[str, Any] | None:
        rs = rayservice(clusters, AKS)
        return rs if rs and "support-fr" in rs["spec"]["serveConfigV2"] else None

    rs = await eventually(patched)
    assert rs["metadata"]["uid"] == created["metadata"]["uid"]  # patched, not recreated
    assert "8192" in rs["spec"]["serveConfigV2"]
    workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert sum(g["replicas"] for g in workers) == 3
    await eventually(lambda: stored_md(clusters)["status"].get("readyReplicas") == 3)
    md = stored_md(clusters)
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"] == 2


async def test_placement_change_moves_the_pool(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: is_ready(clusters))
    await api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": {"placement": {"clusters": [ONPREM]}}})
    await eventually(lambda: rayservice(clusters, ONPREM) is not None)
    await eventually(lambda: rayservice(clusters, AKS) is None)
    await eventually(lambda: stored_md(clusters)["status"].get("clusterNames") == ONPREM)
    await eventually(lambda: is_ready(clusters))


async def test_pool_on_the_hub_gets_an_owner_reference(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    manifest = model_deployment(
        resources={"cpu": "2", "memory": "8Gi"},
        runtime={"engine": "transformers"},
        placement={"clusters": [HUB], "strategy": "Pinned"},
    )
    await api.create(MODELDEPLOYMENT, manifest)
    rs = await eventually(lambda: rayservice(clusters, HUB))
    md = stored_md(clusters)
    (owner,) = rs["metadata"]["ownerReferences"]
    assert owner["uid"] == md["metadata"]["uid"] and owner["kind"] == "ModelDeployment"
    await eventually(lambda: is_ready(clusters))


async def test_delete_removes_children_then_releases_finalizer(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(
        MODELDEPLOYMENT,
        model_deployment(
            scaling={"replicas": 2, "minReplicas": 1, "maxReplicas": 4},
            placement={"clusters": [AKS, ONPREM], "strategy": "Spread", "maxClusters": 2},
        ),
    )
    await eventually(lambda: rayservice(clusters, AKS) and rayservice(clusters, ONPREM))
    await eventually(lambda: is_ready(clusters))
    await api.delete(MODELDEPLOYMENT, NS, "chat")
    await eventually(lambda: clusters.hub.emulator.stored(MDS, NS, "chat") is None)
    assert rayservice(clusters, AKS) is None and rayservice(clusters, ONPREM) is None
    # The finalizer went only after both children were gone.
    history = clusters.hub.emulator.objects["tramontane.dev/v1alpha1/modeldeployments", NS, "chat"]
    versions = [v for v in history.history if v is not None]
    assert "tramontane.dev/cleanup" in versions[-2]["metadata"]["finalizers"]


async def test_deleted_without_its_finalizer_leaves_no_children(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    # The first reconcile does not wait for Kopf's finalizer patch; an object gone before it
    # lands (here: finalizer stripped, then deleted) must still not leave a pool behind.
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: rayservice(clusters, AKS))
    await api.patch(MODELDEPLOYMENT, NS, "chat", {"metadata": {"finalizers": None}})
    await api.delete(MODELDEPLOYMENT, NS, "chat")
    await eventually(lambda: clusters.hub.emulator.stored(MDS, NS, "chat") is None)
    await eventually(lambda: rayservice(clusters, AKS) is None)
    await asyncio.sleep(0.3)  # nothing recreates it afterwards
    assert rayservice(clusters, AKS) is None


async def test_invalid_spec_sets_condition_and_creates_nothing(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    # Valid for the CRD, but an adapter may not take the served model's own name.
    manifest = model_deployment(adapters=[{"name": "mistral-7b", "uri": "az://a/b"}])
    await api.create(MODELDEPLOYMENT, manifest)
    await eventually(lambda: stored_md(clusters).get("status", {}).get("phase") == "Failed")
    cond = condition(stored_md(clusters), "Ready")
    assert cond is not None and cond["reason"] == "InvalidSpec"
    assert "mistral-7b" in cond["message"]
    assert all(not c.emulator.stored_all(RAYSERVICES) for c in clusters.all)


async def test_an_operator_watching_some_namespaces_reconciles_only_those(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay
) -> None:
    run = OperatorRun(operator_settings(clusters.hub.url, all_namespaces=False, namespaces=(NS,)))
    await run.start()
    try:
        other = model_deployment("elsewhere")
        other["metadata"]["namespace"] = "team-b"
        await api.create(MODELDEPLOYMENT, other)
        await api.create(MODELDEPLOYMENT, model_deployment())
        await eventually(lambda: is_ready(clusters))
        await asyncio.sleep(0.5)  # time enough to have touched the other one too
    finally:
        await run.stop()
    assert clusters[AKS].emulator.stored(RAYSERVICES, "team-b", "elsewhere") is None
    untouched = clusters.hub.emulator.stored(MDS, "team-b", "elsewhere") or {}
    assert "status" not in untouched and not untouched["metadata"].get("finalizers")
