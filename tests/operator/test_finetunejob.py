"""FineTuneJob end to end against emulated clusters and a fake KubeRay RayJob controller:
validation before anything runs, dry run, phases with progress from progress.json, quota
queueing with the Tenant's usage, suspend/resume, cancel on delete, and auto-deploy."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fake_rayjob import RAYJOBS, FakeRayJobs
from manifests import AKS, NS, ONPREM, model_deployment, tenant
from operator_harness import Clusters, FakeKubeRay, OperatorRun, eventually
from tramontane_kube import FINETUNEJOB, MODELDEPLOYMENT, TENANT, KubeClient
from tramontane_workers.contract.train_config import TrainProgress

FTJS = "tramontane.dev/v1alpha1/finetunejobs"
MDS = "tramontane.dev/v1alpha1/modeldeployments"
GOOD = {"messages": [{"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris"}]}  # fmt: skip


pytestmark = pytest.mark.usefixtures("fast_poll")  # jobs followed every 0.2 s


def dataset(path: Path, lines: list[Any]) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path.as_uri()


def job(tmp_path: Path, name: str = "tune", data: str | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"uri": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "trainingFiles": [{"uri": data or dataset(tmp_path / f"{name}.jsonl", [GOOD] * 4)}],
        "hyperparameters": {"trainingSteps": 100, "batchSize": 2},
        "resources": {"workers": 1, "gpusPerWorker": 1, "gpuType": "H100"},
        "placement": {"clusters": [AKS]},
        "output": {"uri": (tmp_path / f"out-{name}").as_uri()},
    }
    base.update(spec)
    return {"apiVersion": "tramontane.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": NS}, "spec": base}  # fmt: skip


def stored(clusters: Clusters, name: str = "tune") -> dict[str, Any]:
    obj = clusters.hub.emulator.stored(FTJS, NS, name)
    assert obj is not None
    return obj


def phase(clusters: Clusters, name: str = "tune") -> str | None:
    obj = clusters.hub.emulator.stored(FTJS, NS, name)
    return ((obj or {}).get("status") or {}).get("phase")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}  # not (yet) reported


def rayjob(clusters: Clusters, name: str = "tune", cluster: str = AKS) -> dict[str, Any] | None:
    return clusters[cluster].emulator.stored(RAYJOBS, NS, name)


def all_rayjobs(clusters: Clusters) -> list[tuple[str, str]]:
    """(cluster, name) of every RayJob in every cluster."""
    return [
        (c.name, r["metadata"]["name"])
        for c in clusters.all
        for r in c.emulator.stored_all(RAYJOBS)
    ]


def write_progress(tmp_path: Path, name: str, step: int, state: str = "running", **kw: Any) -> None:
    out = tmp_path / f"out-{name}"
    out.mkdir(exist_ok=True)
    values: dict[str, Any] = {"state": state, "step": step, "total_steps": 100, "percent": step,
                              "train_loss": 2.0 - step / 100, "updated": datetime.now(UTC)}  # fmt: skip
    progress = TrainProgress.model_validate({**values, **kw})
    (out / "progress.json").write_text(progress.model_dump_json())


async def test_job_runs_to_success_with_progress(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path))
    rj = await eventually(lambda: rayjob(clusters))
    labels = rj["metadata"]["labels"]
    assert (
        labels["tramontane.dev/owner-kind"] == "FineTuneJob"
        and labels["tramontane.dev/cluster"] == AKS
    )
    assert NS in clusters[AKS].emulator.namespaces  # created there for the RayJob
    assert "--config-b64" in rj["spec"]["entrypoint"] and rj["spec"]["backoffLimit"] == 3
    assert all_rayjobs(clusters) == [(AKS, "tune")]  # only in the placed cluster
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")

    write_progress(tmp_path, "tune", 40, train_loss=1.6)
    await eventually(lambda: (stored(clusters)["status"].get("progress") or {}).get("step") == 40)
    status = stored(clusters)["status"]
    assert status["phase"] == "Running" and status["cluster"] == AKS and status["rayJob"] == "tune"
    assert status["progress"]["percent"] == 40 and status["progress"]["trainLoss"] == 1.6
    assert condition(stored(clusters), "Validated")["reason"] == "DatasetValid"
    assert status["estimate"]["steps"] == 100

    adapter = (tmp_path / "out-tune" / "adapter").as_uri()
    write_progress(tmp_path, "tune", 100, "succeeded", adapter_uri=adapter)
    rayjobs.finish("tune")
    await eventually(lambda: phase(clusters) == "Succeeded")
    status = stored(clusters)["status"]
    assert condition(stored(clusters), "Complete")["status"] == "True"
    assert status["adapter"]["uri"] == adapter and status["progress"]["step"] == 100
    assert status["completionTime"] and status["startTime"]


async def test_invalid_dataset_fails_validation_and_never_creates_a_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    bad_role = {
        "messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]
    }
    data = dataset(tmp_path / "bad.jsonl", [GOOD, bad_role, GOOD, "{not json", GOOD])
    await api.create(FINETUNEJOB, job(tmp_path, data=data))
    await eventually(lambda: phase(clusters) == "FailedValidation")
    validated = condition(stored(clusters), "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InvalidDataset"
    assert f"{data}:2:" in validated["message"] and f"{data}:4:" in validated["message"]
    assert f"{data}:1:" not in validated["message"] and f"{data}:3:" not in validated["message"]
    assert condition(stored(clusters), "Failed")["reason"] == "InvalidDataset"
    await asyncio.sleep(1.0)  # several poll rounds later: still nothing started
    assert all_rayjobs(clusters) == [] and rayjobs.seen == set()
    assert phase(clusters) == "FailedValidation"


async def test_dry_run_fills_the_estimate_and_stops(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(
        FINETUNEJOB, job(tmp_path, dryRun=True, hyperparameters={"epochs": 2, "batchSize": 2})
    )
    await eventually(lambda: phase(clusters) == "Succeeded")
    status = stored(clusters)["status"]
    assert condition(stored(clusters), "Complete")["reason"] == "DryRun"
    estimate = status["estimate"]
    assert estimate["steps"] == 4 and estimate["epochs"] == 2 and estimate["datasetTokens"] > 0
    assert [g["gpuType"] for g in estimate["perGpuType"]] == ["H100"]
    assert estimate["trainTokens"] > 0 and estimate["perGpuType"][0]["tokensPerSecondPerGpu"] > 0
    # The operator never fetches hf:// models: the size is assumed, and the status says so.
    assert estimate["modelParams"] == 7_248_023_552 and estimate["modelParamsSource"] == "Assumed"
    (assumption,) = estimate["assumptions"]
    assert "hf://mistralai/Mistral-7B-Instruct-v0.3" in assumption
    assert "assumed 7.2B parameters" in condition(stored(clusters), "Validated")["message"]
    await asyncio.sleep(0.6)
    assert all_rayjobs(clusters) == []


async def test_suspend_stops_and_resume_restarts(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path))
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")
    write_progress(tmp_path, "tune", 30)
    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"suspend": True}})
    await eventually(lambda: (rayjob(clusters) or {}).get("spec", {}).get("suspend") is True)
    await eventually(
        lambda: condition(stored(clusters), "Suspended").get("reason") == "SuspendedByUser"
    )
    assert phase(clusters) == "Suspended"
    assert stored(clusters)["status"]["progress"]["step"] == 30  # the checkpointed progress stays

    await api.patch(FINETUNEJOB, NS, "tune", {"spec": {"suspend": False}})
    await eventually(lambda: (rayjob(clusters) or {}).get("spec", {}).get("suspend") is False)
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")
    assert phase(clusters) == "Running"
    assert condition(stored(clusters), "Suspended")["status"] == "False"


async def test_delete_cancels_and_removes_the_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path))
    await eventually(lambda: rayjob(clusters))
    assert "tramontane.dev/cleanup" in stored(clusters)["metadata"]["finalizers"]
    await api.delete(FINETUNEJOB, NS, "tune")
    await eventually(lambda: rayjob(clusters) is None)
    await eventually(lambda: clusters.hub.emulator.stored(FTJS, NS, "tune") is None)
    events = clusters.hub.emulator.stored_all("v1/events")
    cancelled = [e for e in events if e.get("reason") == "Cancelled"]
    assert cancelled and cancelled[0]["involvedObject"]["kind"] == "FineTuneJob"
    assert cancelled[0]["involvedObject"]["name"] == "tune"


async def first_running_second_queued(tmp_path: Path, clusters: Clusters, api: KubeClient) -> None:
    """A one-GPU quota: job `first` holds it (its RayJob exists), `second` waits first in line."""
    await api.create(TENANT, tenant({"gpus": {"H100": 1}}))
    await api.create(FINETUNEJOB, job(tmp_path, "first"))
    await eventually(lambda: rayjob(clusters, "first"))
    await api.create(FINETUNEJOB, job(tmp_path, "second"))
    await eventually(lambda: stored(clusters, "second").get("status", {}).get("queuePosition") == 1)


async def test_quota_queues_and_tenant_reports_usage(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await first_running_second_queued(tmp_path, clusters, api)
    await eventually(lambda: phase(clusters, "second") == "Queued")
    second = stored(clusters, "second")
    assert second["status"]["queuePosition"] == 1
    assert "quota gpus.H100" in condition(second, "Admitted")["message"]
    assert rayjob(clusters, "second") is None

    def tenant_status() -> dict[str, Any]:
        return (
            clusters.hub.emulator.stored("tramontane.dev/v1alpha1/tenants", None, "team") or {}
        ).get("status") or {}

    await eventually(lambda: tenant_status().get("usage", {}).get("gpus") == {"H100": 1})
    assert tenant_status()["usage"]["fineTuneJobs"] == 1 and tenant_status()["phase"] == "Active"

    rayjobs.finish("first")
    await eventually(lambda: phase(clusters, "first") == "Succeeded")
    await eventually(lambda: rayjob(clusters, "second"))  # the freed GPU goes to the queue
    await eventually(lambda: phase(clusters, "second") == "Running")
    assert "queuePosition" not in stored(clusters, "second")["status"]


async def test_success_auto_deploys_the_adapter(
    tmp_path: Path, clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    spec: dict[str, Any] = {"baseModel": {"modelDeploymentRef": {"name": "chat"}},
            "autoDeploy": {"modelDeploymentRef": {"name": "chat"}, "adapterName": "support"}}  # fmt: skip
    await api.create(FINETUNEJOB, job(tmp_path, **spec))
    rj = await eventually(lambda: rayjob(clusters))
    assert "hf://mistralai/Mistral-7B-Instruct-v0.3" in _decoded_config(rj)
    adapter = (tmp_path / "out-tune" / "adapter").as_uri()
    write_progress(tmp_path, "tune", 100, "succeeded", adapter_uri=adapter)
    rayjobs.finish("tune")
    await eventually(lambda: condition(stored(clusters), "Deployed").get("status") == "True")
    md = clusters.hub.emulator.stored(MDS, NS, "chat")
    assert md is not None and md["spec"]["adapters"] == [{"name": "support", "uri": adapter}]
    status = stored(clusters)["status"]
    assert status["adapter"] == {
        "uri": adapter,
        "modelDeployment": "chat",
        "adapterName": "support",
    }
    # The ModelDeployment's pool now serves it.
    await eventually(lambda: "support" in (clusters[AKS].emulator.stored(
        "ray.io/v1/rayservices", NS, "chat") or {}).get("spec", {}).get("serveConfigV2", ""))  # fmt: skip


def _decoded_config(rj: dict[str, Any]) -> str:
    from tramontane_workers.contract.train_config import config_from_b64

    return config_from_b64(rj["spec"]["entrypoint"].split()[-1]).model_dump_json()


async def test_an_unreachable_cluster_is_waited_for_not_replaced(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    await api.create(FINETUNEJOB, job(tmp_path, placement={"clusters": [AKS, ONPREM]}))
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")
    await clusters[AKS].stop()
    await asyncio.sleep(2.0)  # many poll rounds with the job's cluster gone
    assert [
        r for c in (clusters.hub, clusters[ONPREM]) for r in c.emulator.stored_all(RAYJOBS)
    ] == []
    assert phase(clusters) == "Running" and stored(clusters)["status"]["cluster"] == AKS
    await clusters[AKS].start()
    rayjobs.finish("tune")
    await eventually(lambda: phase(clusters) == "Succeeded", timeout_s=30)


async def test_an_adapter_referencing_the_job_is_served_once_it_succeeds(
    tmp_path: Path, clusters: Clusters, api: KubeClient, kuberay: FakeKubeRay,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    adapters = [{"name": "from-job", "fineTuneJobRef": {"name": "tune"}}]
    await api.create(MODELDEPLOYMENT, model_deployment("chat", adapters=adapters))
    await api.create(FINETUNEJOB, job(tmp_path))
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")

    def served() -> str:
        rs = clusters[AKS].emulator.stored("ray.io/v1/rayservices", NS, "chat") or {}
        return str((rs.get("spec") or {}).get("serveConfigV2") or "")

    await eventually(served)
    assert "from-job" not in served()  # no output yet
    adapter = (tmp_path / "out-tune" / "adapter").as_uri()
    write_progress(tmp_path, "tune", 100, "succeeded", adapter_uri=adapter)
    rayjobs.finish("tune")
    await eventually(lambda: "from-job" in served() and adapter in served())


async def test_an_unreadable_dataset_keeps_validating_until_it_appears(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs, operator: OperatorRun
) -> None:
    missing = tmp_path / "later.jsonl"
    await api.create(FINETUNEJOB, job(tmp_path, data=missing.as_uri()))
    await eventually(
        lambda: "cannot read" in condition(stored(clusters), "Validated").get("message", "")
    )
    assert phase(clusters) == "Validating" and all_rayjobs(clusters) == []
    dataset(missing, [GOOD] * 3)
    await eventually(lambda: rayjob(clusters))
    # The RayJob is created just before the status saying so is written.
    await eventually(lambda: condition(stored(clusters), "Validated")["reason"] == "DatasetValid")


async def test_tenant_counts_cpu_only_model_deployments(
    clusters: Clusters, api: KubeClient, operator: OperatorRun
) -> None:
    await api.create(TENANT, tenant({"maxModelDeployments": 3}))
    cpu_only = model_deployment(
        "cpu-chat",
        runtime={"engine": "transformers"},
        resources={"cpu": "2", "memory": "4Gi"},
        scaling={"minReplicas": 1, "maxReplicas": 1},
    )
    await api.create(MODELDEPLOYMENT, model_deployment("gpu-chat"))
    await api.create(MODELDEPLOYMENT, cpu_only)

    def usage() -> dict[str, Any]:
        tenant = clusters.hub.emulator.stored("tramontane.dev/v1alpha1/tenants", None, "team")
        return ((tenant or {}).get("status") or {}).get("usage") or {}

    await eventually(lambda: usage().get("modelDeployments") == 2)
    assert usage()["gpus"] == {"H100": 4}  # maxReplicas x GPUs of the GPU deployment only
