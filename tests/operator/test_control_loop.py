"""The one control loop: ModelDeployments admitted against the tenant's quota, one GPU ledger
shared by serving and training, allowedClusters, no orphans, backoff, restarts.

Black-box: objects go in through the hub's API; what is asserted is what lands in the
emulated clusters and in the statuses.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from fake_rayjob import RAYJOBS, FakeRayJobs
from manifests import AKS, HUB, NS, ONPREM, SYSTEM_NS, model_deployment, operator_settings, tenant
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay, OperatorRun, eventually
from test_finetunejob import job
from tramontane_kube import (
    FINETUNEJOB,
    MODELDEPLOYMENT,
    RAYSERVICE,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_local.kube_emulator import Fault

MDS = "tramontane.dev/v1alpha1/modeldeployments"
FTJS = "tramontane.dev/v1alpha1/finetunejobs"

pytestmark = pytest.mark.usefixtures("fast_poll")


def md_status(clusters: Clusters, name: str) -> dict[str, Any]:
    obj = clusters.hub.emulator.stored(MDS, NS, name) or {}
    return dict(obj.get("status") or {})


def ftj_status(clusters: Clusters, name: str) -> dict[str, Any]:
    obj = clusters.hub.emulator.stored(FTJS, NS, name) or {}
    return dict(obj.get("status") or {})


def rayservices(clusters: Clusters) -> list[tuple[str, str]]:
    return sorted(
        (c.name, rs["metadata"]["name"])
        for c in clusters.all
        for rs in c.emulator.stored_all(RAYSERVICES)
    )


def all_rayjobs(clusters: Clusters) -> list[tuple[str, str]]:
    return sorted(
        (c.name, r["metadata"]["name"])
        for c in clusters.all
        for r in c.emulator.stored_all(RAYJOBS)
    )


FOUR_WORKERS = {
    "resources": {"workers": 4, "gpusPerWorker": 1, "gpuType": "H100"},
    "hyperparameters": {"trainingSteps": 100, "batchSize": 4},  # a sequence per worker
}


def gpus_in(clusters: Clusters, cluster: str) -> int:
    """H100s the children in `cluster` ask for (worker replicas x GPUs per worker)."""
    total = 0
    for rs in clusters[cluster].emulator.stored_all(RAYSERVICES):
        for group in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []:
            total += int(group.get("replicas") or 0) * _gpus(group)
    for rj in clusters[cluster].emulator.stored_all(RAYJOBS):
        if rj["spec"].get("suspend"):
            continue
        for group in rj["spec"]["rayClusterSpec"].get("workerGroupSpecs") or []:
            total += int(group.get("replicas") or 0) * _gpus(group)
    return total


def _gpus(group: dict[str, Any]) -> int:
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu") or 0)


async def test_a_deployment_over_the_gpu_quota_is_queued_and_creates_nothing(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(TENANT, tenant({"gpus": {"H100": 4}}))
    # maxReplicas x 1 H100: 4 fills the quota; the next one waits.
    await api.create(MODELDEPLOYMENT, model_deployment("first"))
    await eventually(lambda: md_status(clusters, "first").get("phase") == "Ready", timeout_s=20)
    await api.create(
        MODELDEPLOYMENT, model_deployment("second", scaling={"replicas": 1, "maxReplicas": 2})
    )
    status = await eventually(
        lambda: (
            md_status(clusters, "second").get("phase") == "Queued" and md_status(clusters, "second")
        )
    )
    assert status["queuePosition"] == 1
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert placed["status"] == "False" and placed["reason"] == "QuotaExceeded"
    assert "quota gpus.H100: needs 2, 4 of 4 in use" in placed["message"]
    await asyncio.sleep(0.5)
    assert rayservices(clusters) == [(AKS, "first")]  # nothing for the queued one
    # Room frees: the queued one is admitted and placed.
    await api.delete(MODELDEPLOYMENT, NS, "first")
    await eventually(lambda: rayservices(clusters) == [(AKS, "second")], timeout_s=20)
    await eventually(lambda: md_status(clusters, "second").get("phase") == "Ready", timeout_s=20)
    assert "queuePosition" not in md_status(clusters, "second")
    tenant_status = await eventually(
        lambda: (
            (clusters.hub.emulator.stored("tramontane.dev/v1alpha1/tenants", None, "team") or {})
            .get("status", {})
            .get("usage", {})
            .get("gpus")
            == {"H100": 2}
        )
    )
    assert tenant_status


async def test_max_model_deployments_and_priority_decide_who_waits(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(TENANT, tenant({"maxModelDeployments": 1}))
    await api.create(MODELDEPLOYMENT, model_deployment("holder"))
    await eventually(lambda: rayservices(clusters) == [(AKS, "holder")], timeout_s=20)
    await api.create(MODELDEPLOYMENT, model_deployment("low"))
    await eventually(lambda: md_status(clusters, "low").get("phase") == "Queued")
    await api.create(MODELDEPLOYMENT, model_deployment("urgent", priority=100))
    await eventually(lambda: md_status(clusters, "urgent").get("queuePosition") == 1)
    await eventually(lambda: md_status(clusters, "low").get("queuePosition") == 2)
    message = next(c for c in md_status(clusters, "low")["conditions"] if c["type"] == "Placed")[
        "message"
    ]
    assert "maxModelDeployments: 1 of 1 in use" in message
    await api.delete(MODELDEPLOYMENT, NS, "holder")
    # The higher priority goes first, though it came last; the other keeps waiting.
    await eventually(lambda: rayservices(clusters) == [(AKS, "urgent")], timeout_s=20)
    await eventually(lambda: md_status(clusters, "low").get("queuePosition") == 1)
    assert md_status(clusters, "low")["phase"] == "Queued"


async def test_allowed_clusters_bound_where_both_kinds_are_placed(
    tmp_path: Path,
    clusters: Clusters,
    api: KubeClient,
    kuberay: FakeKubeRay,
    rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:
    team = tenant({})
    team["spec"]["allowedClusters"] = [ONPREM]
    await api.create(TENANT, team)
    spread = {"clusterSelector": {"matchLabels": {"tier": "gpu"}}, "strategy": "Spread"}
    await api.create(MODELDEPLOYMENT, model_deployment("chat", placement=spread))
    await eventually(lambda: rayservices(clusters) == [(ONPREM, "chat")], timeout_s=20)
    await api.create(
        FINETUNEJOB, job(tmp_path, placement={"clusterSelector": {"matchLabels": {"tier": "gpu"}}})
    )
    await eventually(lambda: all_rayjobs(clusters) == [(ONPREM, "tune")], timeout_s=20)
    # A job that names only a cluster the tenant may not use waits, with the reason.
    await api.create(FINETUNEJOB, job(tmp_path, "elsewhere", placement={"clusters": [AKS]}))
    status = await eventually(
        lambda: (
            ftj_status(clusters, "elsewhere").get("phase") == "Queued"
            and ftj_status(clusters, "elsewhere")
        )
    )
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    assert admitted["reason"] == "NoEligibleCluster"
    assert (AKS, "elsewhere") not in all_rayjobs(clusters)


async def test_serving_and_training_never_over_commit_a_cluster(
    tmp_path: Path,
    clusters: Clusters,
    api: KubeClient,
    kuberay: FakeKubeRay,
    rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:
    # AKS has 8 H100s. Serving takes 6; training wants 4 there.
    pinned = {"clusters": [AKS], "strategy": "Pinned"}
    await api.create(
        MODELDEPLOYMENT,
        model_deployment(
            "chat", placement=pinned, scaling={"replicas": 6, "minReplicas": 1, "maxReplicas": 6}
        ),
    )
    await eventually(lambda: gpus_in(clusters, AKS) == 6, timeout_s=20)
    await api.create(FINETUNEJOB, job(tmp_path, **FOUR_WORKERS, placement={"clusters": [AKS]}))
    await eventually(lambda: ftj_status(clusters, "tune").get("phase") == "Queued", timeout_s=20)
    for _ in range(10):
        assert gpus_in(clusters, AKS) <= 8
        await asyncio.sleep(0.1)
    assert all_rayjobs(clusters) == []
    # Serving scales down to 3: the job fits and runs; serving cannot grow back into it.
    await api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": {"scaling": {"replicas": 3}}})
    await eventually(lambda: all_rayjobs(clusters) == [(AKS, "tune")], timeout_s=20)
    await api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": {"scaling": {"replicas": 6}}})
    await eventually(lambda: md_status(clusters, "chat").get("observedGeneration") == 3)
    for _ in range(10):
        assert gpus_in(clusters, AKS) <= 8
        await asyncio.sleep(0.1)
    status = md_status(clusters, "chat")
    assert status["replicas"] == 4  # 4 + the job's 4 = 8: serving gets what is free
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InsufficientCapacity"


async def test_a_sweep_deletes_children_whose_owner_is_gone_and_keeps_the_others(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay
) -> None:
    run = OperatorRun(operator_settings(clusters.hub.url, sweep_interval_s=0.3))
    await run.start()
    try:
        await api.create(MODELDEPLOYMENT, model_deployment())
        await eventually(lambda: rayservices(clusters) == [(AKS, "chat")], timeout_s=20)
        live = clusters[AKS].emulator.stored(RAYSERVICES, NS, "chat")
        assert live is not None
        # Children left behind: by an owner deleted while the operator was away, and by an
        # owner of the same name but another life (deleted and created again).
        member = KubeClient("onprem", ClusterConfig(server=clusters[ONPREM].url), attempts=1)
        try:
            orphan = _copy(live, name="gone", uid="0000")
            stale = _copy(live, name="chat", uid="1111")
            await member.create(RAYSERVICE, orphan)
            await member.create(RAYSERVICE, stale)
            await eventually(lambda: rayservices(clusters) == [(AKS, "chat")], timeout_s=10)
        finally:
            await member.close()
    finally:
        await run.stop()


def _copy(rayservice: dict[str, Any], name: str, uid: str) -> dict[str, Any]:
    meta = rayservice["metadata"]
    labels = {**meta["labels"], "tramontane.dev/owner-name": name, "tramontane.dev/owner-uid": uid}
    return {
        "apiVersion": rayservice["apiVersion"],
        "kind": "RayService",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels},
        "spec": rayservice["spec"],
    }


async def test_a_persistent_403_is_retried_with_growing_delays(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay
) -> None:
    forbidden = Fault("POST", f"/namespaces/{NS}/rayservices", status=403, times=10_000)
    clusters[AKS].emulator.faults.append(forbidden)
    settings = operator_settings(clusters.hub.url, retry_delay_s=0.05, backoff_max_s=0.8)
    run = OperatorRun(settings)
    await run.start()
    try:
        await api.create(MODELDEPLOYMENT, model_deployment())
        await asyncio.sleep(3.0)
        times = list(forbidden.hit_times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # A storm would be hundreds; doubling from 50 ms to a 0.8 s cap is about ten.
        assert 4 <= len(times) <= 14, times
        assert max(gaps[-3:]) >= 0.5 and min(gaps[:2]) < 0.2, gaps
        forbidden.times = 0  # permission granted: it converges, and the backoff resets
        await eventually(lambda: rayservices(clusters) == [(AKS, "chat")], timeout_s=10)
    finally:
        await run.stop()


async def test_a_restart_rebuilds_the_ledger_from_the_children(
    tmp_path: Path,
    clusters: Clusters,
    api: KubeClient,
    kuberay: FakeKubeRay,
    rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:
    await api.create(TENANT, tenant({"gpus": {"H100": 6}}))
    pinned = {"clusters": [AKS], "strategy": "Pinned"}
    scaling = {"replicas": 2, "minReplicas": 1, "maxReplicas": 2}
    await api.create(MODELDEPLOYMENT, model_deployment("chat", placement=pinned, scaling=scaling))
    await api.create(FINETUNEJOB, job(tmp_path, **FOUR_WORKERS, placement={"clusters": [AKS]}))
    await eventually(lambda: all_rayjobs(clusters) == [(AKS, "tune")], timeout_s=20)
    await operator.kill()
    # While it is down, another job arrives: 2 + 4 of 6 are held, so it must wait after the
    # restart (nothing lost), and the held ones keep running (nothing counted twice).
    await api.create(
        FINETUNEJOB,
        job(
            tmp_path,
            "next",
            resources={**FOUR_WORKERS["resources"], "workers": 1},
            placement={"clusters": [AKS]},
        ),
    )
    await operator.start()
    await eventually(lambda: ftj_status(clusters, "next").get("phase") == "Queued", timeout_s=20)
    await asyncio.sleep(0.5)
    assert all_rayjobs(clusters) == [(AKS, "tune")]
    assert rayservices(clusters) == [(AKS, "chat")]
    assert ftj_status(clusters, "tune")["phase"] in ("Running", "Succeeded")
    assert ftj_status(clusters, "next")["queuePosition"] == 1


LEASES = "coordination.k8s.io/v1/leases"


def lease(clusters: Clusters) -> dict[str, Any]:
    return clusters.hub.emulator.stored(LEASES, SYSTEM_NS, "tramontane-operator") or {}


async def test_the_standby_takes_over_when_the_leader_dies_mid_burst(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay
) -> None:
    # Short, but with room for a loaded 2-core machine: a new leader's first passes must not
    # starve its renewals past the deadline.
    timing = {
        "leader_election_lease_duration_s": 5.0,
        "leader_election_renew_deadline_s": 4.0,
        "leader_election_retry_period_s": 0.5,
    }
    runs = {
        name: OperatorRun(
            operator_settings(clusters.hub.url, leader_election_identity=name, **timing)
        )
        for name in ("first", "second")
    }
    await runs["first"].start()
    await eventually(lambda: lease(clusters).get("spec", {}).get("holderIdentity") == "first")
    await runs["second"].start()
    try:
        spread = {"clusterSelector": {"matchLabels": {"tier": "gpu"}}, "strategy": "Spread"}
        scaling = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1}
        names = [f"md-{i}" for i in range(16)]  # the 16 H100s of the two members
        for name in names[:8]:
            await api.create(
                MODELDEPLOYMENT, model_deployment(name, placement=spread, scaling=scaling)
            )
        await eventually(lambda: len(rayservices(clusters)) >= 4, timeout_s=20)
        # The leader dies: its Lease is not released (the release fails, as on a crash).
        release = Fault("PUT", "/leases/tramontane-operator", 503, times=10_000)
        clusters.hub.emulator.faults.append(release)
        await runs["first"].kill()
        assert release.hits >= 1  # it tried to release, and could not
        assert lease(clusters)["spec"]["holderIdentity"] == "first"  # so the standby waits
        release.times = 0
        for name in names[8:]:
            await api.create(
                MODELDEPLOYMENT, model_deployment(name, placement=spread, scaling=scaling)
            )
        held = await eventually(
            lambda: (
                lease(clusters).get("spec", {}).get("holderIdentity") == "second"
                and lease(clusters)
            ),
            timeout_s=20,
        )
        assert held["spec"]["leaseTransitions"] >= 1
        await eventually(
            lambda: all(md_status(clusters, n).get("phase") == "Ready" for n in names), timeout_s=30
        )
        # Nothing lost, nothing duplicated: one pool per deployment, each in one cluster.
        owners = [name for _, name in rayservices(clusters)]
        assert sorted(owners) == sorted(names)
        for cluster in (HUB, AKS, ONPREM):
            assert gpus_in(clusters, cluster) <= 8
        assert runs["second"].error is None  # it kept its leadership
    finally:
        for run in runs.values():
            await run.stop()


async def test_a_refused_child_is_not_retried_until_the_spec_changes(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    refused = Fault("POST", f"/namespaces/{NS}/rayservices", status=422, times=10_000)
    clusters[AKS].emulator.faults.append(refused)
    await api.create(MODELDEPLOYMENT, model_deployment())
    await eventually(lambda: refused.hits >= 1)
    await asyncio.sleep(1.5)  # a retried error would have hit it several times by now
    assert refused.hits == 1
    refused.times = 0
    await api.patch(MODELDEPLOYMENT, NS, "chat", {"spec": {"scaling": {"replicas": 1}}})
    await eventually(lambda: rayservices(clusters) == [(AKS, "chat")], timeout_s=10)


async def test_a_grown_max_replicas_gets_only_what_the_quota_has_left(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    await api.create(TENANT, tenant({"gpus": {"H100": 4}}))
    two = {"replicas": 2, "minReplicas": 1, "maxReplicas": 2}
    await api.create(MODELDEPLOYMENT, model_deployment("first", scaling=two))
    await api.create(MODELDEPLOYMENT, model_deployment("second", scaling=two))
    await eventually(lambda: md_status(clusters, "second").get("phase") == "Ready", timeout_s=20)
    # Admitted at 2 x 1 H100 each: growing "first" to 4 would take the quota past 4.
    grown = {"replicas": 4, "minReplicas": 1, "maxReplicas": 4}
    await api.patch(MODELDEPLOYMENT, NS, "first", {"spec": {"scaling": grown}})
    await eventually(lambda: md_status(clusters, "first").get("observedGeneration") == 2)
    status = md_status(clusters, "first")
    assert status["replicas"] == 2
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert "at most 2 replicas: the tenant's GPU quota has no room for more" in placed["message"]
    assert gpus_in(clusters, AKS) == 4
    # Room frees: the cap lifts.
    await api.delete(MODELDEPLOYMENT, NS, "second")
    await eventually(lambda: md_status(clusters, "first").get("replicas") == 4, timeout_s=20)


# Regressions found by the property tests (tests/unit/test_ledger_properties.py); the growth
# of an admitted deployment is test_a_grown_max_replicas_gets_only_what_the_quota_has_left.


async def test_a_job_no_cluster_can_take_does_not_hold_back_its_tenant(
    tmp_path: Path,
    clusters: Clusters,
    api: KubeClient,
    kuberay: FakeKubeRay,
    rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:
    await api.create(TENANT, tenant({"gpus": {"H100": 1}}))
    # The hub has no H100s: the job fits the quota, but no cluster.
    await api.create(FINETUNEJOB, job(tmp_path, placement={"clusters": [HUB]}))
    status = await eventually(
        lambda: (
            ftj_status(clusters, "tune").get("phase") == "Queued" and ftj_status(clusters, "tune")
        ),
        timeout_s=20,
    )
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    assert admitted["reason"] == "NoEligibleCluster"
    # A younger deployment that fits the quota (1 of 1) and AKS: nothing holds it back.
    scaling = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1}
    await api.create(MODELDEPLOYMENT, model_deployment("chat", scaling=scaling))
    phase = await eventually(lambda: md_status(clusters, "chat").get("phase"), timeout_s=20)
    assert phase != "Queued", md_status(clusters, "chat")


async def test_a_pool_left_behind_an_outage_keeps_its_gpus_counted(
    clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay, operator: OperatorRun
) -> None:
    spread = {"clusterSelector": {"matchLabels": {"tier": "gpu"}}, "strategy": "Spread"}
    eight = {"replicas": 8, "minReplicas": 1, "maxReplicas": 8}
    await api.create(MODELDEPLOYMENT, model_deployment("a", placement=spread, scaling=eight))
    await eventually(lambda: rayservices(clusters) == [(AKS, "a")], timeout_s=20)
    # AKS goes away with a's pool in it (and, here, that pool cannot be deleted after either:
    # it stays, as a pool does while its cluster is unreachable).
    undeletable = Fault("DELETE", f"/namespaces/{NS}/rayservices/a", status=500, times=10_000)
    clusters[AKS].emulator.faults.append(undeletable)
    await clusters[AKS].stop()
    # a fails over to onprem; its pool in AKS stays listed, left behind (it may run).
    pools = await eventually(
        lambda: (
            [(p["name"], p.get("state")) for p in md_status(clusters, "a").get("clusters") or []]
            if md_status(clusters, "a").get("clusterNames") == ONPREM
            else None
        ),
        timeout_s=20,
    )
    assert pools == [(ONPREM, pools[0][1]), (AKS, "Unreachable")], pools
    # Meanwhile b is pinned to AKS, whose 8 H100s a's pool still takes.
    pinned = {"clusters": [AKS], "strategy": "Pinned"}
    await api.create(MODELDEPLOYMENT, model_deployment("b", placement=pinned, scaling=eight))
    await eventually(lambda: md_status(clusters, "b").get("phase"), timeout_s=20)
    await clusters[AKS].start()

    def b_decided_with_aks_back() -> bool:
        conditions = md_status(clusters, "b").get("conditions") or []
        healthy = all("unhealthy" not in (c.get("message") or "") for c in conditions)
        return (AKS, "b") in rayservices(clusters) or (bool(conditions) and healthy)

    await eventually(b_decided_with_aks_back, timeout_s=20)
    assert gpus_in(clusters, AKS) <= 8, rayservices(clusters)
