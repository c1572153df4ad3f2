"""Many ModelDeployments at once: under load a pass only creates children and the status
follows at low priority; placement must still never hand out the same GPUs twice."""

from __future__ import annotations

import asyncio

from manifests import AKS, NS, ONPREM, model_deployment, operator_settings
from operator_harness import RAYSERVICES, Clusters, OperatorRun, eventually
from tramontane_kube import MODELDEPLOYMENT, KubeClient
from tramontane_operator.builders.labels import FINALIZER

MDS = "tramontane.dev/v1alpha1/modeldeployments"
COUNT = 40  # one GPU each; the two members have 8 H100s each
CAPACITY = 16


def _manifest(i: int) -> dict[str, object]:
    return model_deployment(
        f"burst-{i:02d}",
        scaling={"replicas": 1, "minReplicas": 1, "maxReplicas": 1},
        placement={"clusterSelector": {"matchLabels": {"tier": "gpu"}}, "strategy": "Spread"},
    )


def _settled(clusters: Clusters) -> bool:
    mds = clusters.hub.emulator.stored_all(MDS)
    return len(mds) == COUNT and all(
        FINALIZER in (md["metadata"].get("finalizers") or [])
        and (md.get("status") or {}).get("observedGeneration") == 1
        for md in mds
    )


async def test_a_burst_never_places_the_same_gpus_twice_and_every_status_follows(
    clusters: Clusters, api: KubeClient
) -> None:
    # Two workers: most passes run while others wait, i.e. children first, status later.
    run = OperatorRun(operator_settings(clusters.hub.url, reconcile_workers=2))
    await run.start()
    try:
        await asyncio.gather(*(api.create(MODELDEPLOYMENT, _manifest(i)) for i in range(COUNT)))
        await eventually(lambda: _settled(clusters), timeout_s=30)
    finally:
        await run.stop()

    mds = clusters.hub.emulator.stored_all(MDS)
    placed = [md for md in mds if md["status"].get("clusterNames")]
    waiting = [md for md in mds if not md["status"].get("clusterNames")]
    assert len(placed) == CAPACITY
    reasons = {
        c["reason"] for md in waiting for c in md["status"]["conditions"] if c["type"] == "Placed"
    }
    assert reasons == {"NoEligibleCluster"}  # every member is full
    # Never more pools than GPUs, at any moment: no child was ever created for the others.
    ever_created = [
        key
        for member in (clusters[AKS], clusters[ONPREM])
        for key in member.emulator.created_at
        if key[0] == "rayservices" and key[1] == NS
    ]
    assert len(ever_created) == CAPACITY
    children = sum(len(clusters[m].emulator.stored_all(RAYSERVICES)) for m in (AKS, ONPREM))
    assert children == CAPACITY
