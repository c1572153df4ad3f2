"""Changing a FineTuneJob after its RayJob exists, against emulated clusters (the hub admits
updates with the CRD's CEL transition rules, `oldSelf` included): a hyperparameter change
while running is refused naming the field; suspend, change, resume gives a new RayJob with
the new settings; job controls are patched onto the live RayJob; a priority change reorders
the queue; a dry run turned off trains."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fake_rayjob import FakeRayJobs
from manifests import NS, operator_settings, tenant
from operator_harness import Clusters, OperatorRun, eventually
from test_finetunejob import condition, first_running_second_queued, job, phase, rayjob, stored
from tramontane_kube import FINETUNEJOB, TENANT, Invalid, KubeClient
from tramontane_workers.contract.train_config import TrainConfig, config_from_b64

pytestmark = pytest.mark.usefixtures("fast_poll")  # jobs followed every 0.2 s


def train_config(rj: dict[str, Any]) -> TrainConfig:
    return config_from_b64(rj["spec"]["entrypoint"].split()[-1])


def workers(rj: dict[str, Any]) -> int:
    return int(rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"])


async def training(clusters: Clusters, name: str = "tune") -> None:
    await eventually(
        lambda: condition(stored(clusters, name), "Running").get("reason") == "Training"
    )


async def test_changing_hyperparameters_while_running_is_refused(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path))
    await training(clusters)
    with pytest.raises(Invalid) as refused:
        await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"hyperparameters": {"seed": 7}}})
    assert "spec.hyperparameters" in str(refused.value)
    assert "can change only while the job is suspended" in str(refused.value)
    with pytest.raises(Invalid, match=r"spec\.output"):
        await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"output": {"uri": "file:///x"}}})
    assert stored(clusters)["spec"]["hyperparameters"].get("seed", 0) == 0
    clusters.hub.emulator.violations.clear()  # the refusals above were meant


async def test_suspend_change_resume_replaces_the_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path))
    await training(clusters)
    first = rayjob(clusters)
    assert first is not None and workers(first) == 1
    assert train_config(first).learning_rate == pytest.approx(1e-4)

    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"suspend": True}})
    await eventually(lambda: phase(clusters) == "Suspended")
    change = {"hyperparameters": {"learningRate": 3e-4}, "resources": {"workers": 2}}
    await api.patch(FINETUNEJOB, NS, "tune", {"spec": change})
    await eventually(lambda: ((rayjob(clusters) or {}).get("status") or {}).get(
        "jobDeploymentStatus") == "Suspended")  # fmt: skip
    assert train_config(rayjob(clusters) or {}).learning_rate == pytest.approx(1e-4)  # kept

    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"suspend": False}})
    new = await eventually(lambda: (rj := rayjob(clusters)) and workers(rj) == 2 and rj)
    config = train_config(new)
    assert config.learning_rate == pytest.approx(3e-4) and config.num_workers == 2
    assert new["metadata"]["uid"] != first["metadata"]["uid"]  # a new RayJob, not a patch
    assert new["spec"]["suspend"] is False
    await training(clusters)
    assert phase(clusters) == "Running" and stored(clusters)["status"]["cluster"] is not None
    events = clusters.hub.emulator.stored_all("v1/events")
    assert any(e.get("reason") == "Replacing" for e in events)


async def test_job_controls_are_patched_onto_the_live_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path))
    await training(clusters)
    uid = (rayjob(clusters) or {})["metadata"]["uid"]
    await api.patch(
        FINETUNEJOB, NS, "tune", {"spec": {"activeDeadlineSeconds": 7200, "backoffLimit": 1}}
    )
    await eventually(lambda: (rayjob(clusters) or {})["spec"].get("activeDeadlineSeconds") == 7200)
    rj = rayjob(clusters) or {}
    assert rj["spec"]["backoffLimit"] == 1 and rj["metadata"]["uid"] == uid  # same RayJob
    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"activeDeadlineSeconds": None}})
    await eventually(lambda: "activeDeadlineSeconds" not in (rayjob(clusters) or {})["spec"])
    assert phase(clusters) == "Running"


async def test_a_priority_change_reorders_the_queue(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await first_running_second_queued(tmp_path, clusters, api)
    await api.create(FINETUNEJOB, job(tmp_path, "third"))
    await eventually(lambda: stored(clusters, "third").get("status", {}).get("queuePosition") == 2)

    await api.patch(FINETUNEJOB, NS, "third", {"spec": {"priority": 10}})

    def positions() -> tuple[Any, Any]:
        return tuple(
            stored(clusters, n)["status"].get("queuePosition") for n in ("third", "second")
        )

    await eventually(lambda: positions() == (1, 2))
    rayjobs.finish("first")
    await eventually(lambda: rayjob(clusters, "third"))  # the freed GPU goes to the new first
    await eventually(lambda: phase(clusters, "third") == "Running")
    assert rayjob(clusters, "second") is None and phase(clusters, "second") == "Queued"


@pytest.fixture
async def slow_resync(clusters: Clusters, api: KubeClient) -> AsyncIterator[OperatorRun]:
    """The operator with its production resync interval: a finished job is not polled again."""
    run = OperatorRun(operator_settings(clusters.hub.url, resync_interval_s=600.0))
    await run.start()
    try:
        yield run
    finally:
        await run.stop()


async def test_a_dry_run_turned_off_trains(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    slow_resync: OperatorRun,
) -> None:  # fmt: skip
    await api.create(FINETUNEJOB, job(tmp_path, dryRun=True))
    await eventually(lambda: phase(clusters) == "Succeeded")
    estimate = stored(clusters)["status"]["estimate"]
    assert (
        condition(stored(clusters), "Complete")["reason"] == "DryRun" and rayjob(clusters) is None
    )

    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"dryRun": False}})
    await eventually(lambda: rayjob(clusters))
    await training(clusters)
    status = stored(clusters)["status"]
    assert status["phase"] == "Running" and status["estimate"] == estimate
    assert "completionTime" not in status
    assert condition(stored(clusters), "Complete")["reason"] == "NotComplete"
    with pytest.raises(Invalid, match=r"spec\.dryRun"):
        await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"dryRun": True}})
    clusters.hub.emulator.violations.clear()  # the refusal above was meant


async def test_resuming_with_more_gpus_than_the_quota_queues(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(TENANT, tenant({"gpus": {"H100": 1}}))
    await api.create(FINETUNEJOB, job(tmp_path))
    await training(clusters)
    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"suspend": True}})
    await eventually(lambda: phase(clusters) == "Suspended")
    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"resources": {"workers": 2}}})
    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"suspend": False}})
    # Replaced (the old RayJob deleted), then queued by the quota for the new 2 GPUs.
    await eventually(
        lambda: "quota gpus.H100" in condition(stored(clusters), "Admitted").get("message", "")
    )
    assert phase(clusters) == "Queued" and rayjob(clusters) is None
    assert condition(stored(clusters), "Admitted")["status"] == "False"
