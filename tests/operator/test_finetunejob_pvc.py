"""FineTuneJobs with pvc:// datasets, end to end against emulated clusters: the operator places
the job, validates the claims' files with a real validation Job run by a fake kubelet in that
cluster (the workers' entry point in a subprocess, claims under a tmp dir), reads the report
from the pod's termination message, deletes the Job, and runs the RayJob there with the claims
mounted — or ends in FailedValidation with line numbers, or says clearly what is missing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_kubelet import JOBS, PODS, FakeKubelet
from fake_rayjob import FakeRayJobs
from manifests import AKS, NS, ONPREM
from operator_harness import Clusters, OperatorRun, eventually
from test_finetunejob import GOOD, all_rayjobs, condition, dataset, job, phase, rayjob, stored
from tramontane_kube import FINETUNEJOB, KubeClient
from tramontane_workers.contract.train_config import TrainProgress, progress_line

BAD_ROLE = {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}


pytestmark = pytest.mark.usefixtures("fast_poll")  # jobs followed every 0.2 s


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    """The claims of the AKS member cluster: `data` holds datasets, `out` the outputs."""
    root = tmp_path / "claims-aks"
    (root / "data").mkdir(parents=True)
    (root / "out").mkdir()
    return root


@pytest.fixture
async def kubelet(clusters: Clusters, claims: Path) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(clusters.all, {AKS: claims})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def pvc_job(tmp_path: Path, train: str, **spec: Any) -> dict[str, Any]:
    return job(tmp_path, data=train, output={"uri": "pvc://out/tune"}, **spec)


def validation_jobs(clusters: Clusters) -> list[tuple[str, str]]:
    return [
        (c.name, j["metadata"]["name"]) for c in clusters.all for j in c.emulator.stored_all(JOBS)
    ]


def validated_message(clusters: Clusters) -> str:
    return str(condition(stored(clusters), "Validated").get("message", ""))


async def test_a_good_pvc_dataset_is_validated_in_its_cluster_and_trained_there(
    tmp_path: Path, claims: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    dataset(claims / "data" / "train.jsonl", [GOOD] * 4)
    # Placed before validation (in AKS, the first named); it stays there for training.
    spec = {"placement": {"clusters": [AKS, ONPREM]},
            "validationFiles": [{"uri": "pvc://data/train.jsonl"}]}  # fmt: skip
    await api.create(FINETUNEJOB, pvc_job(tmp_path, "pvc://data/train.jsonl", **spec))
    rj = await eventually(lambda: rayjob(clusters))
    assert kubelet.runs == [(AKS, "tune-validate")]
    # The RayJob is created just before the status saying so is written.
    await eventually(lambda: stored(clusters)["status"].get("rayJob") == "tune")
    status = stored(clusters)["status"]
    assert status["cluster"] == AKS and status["estimate"]["datasetTokens"] > 0
    assert condition(stored(clusters), "Validated")["reason"] == "DatasetValid"
    assert validated_message(clusters) == (  # the hf:// model's size is assumed, out loud
        "8 lines valid; estimate: base model size unknown (could not read "
        "hf://mistralai/Mistral-7B-Instruct-v0.3: not read by the operator (trust model)); "
        "assumed 7.2B parameters (Mistral 7B v0.3)"
    )
    await eventually(lambda: validation_jobs(clusters) == [])  # deleted once read
    assert all_rayjobs(clusters) == [(AKS, "tune")]
    for group in [rj["spec"]["rayClusterSpec"]["headGroupSpec"],
                  *rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:  # fmt: skip
        pod = group["template"]["spec"]
        claims_used = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]
                       for v in pod["volumes"]}  # fmt: skip
        assert claims_used == {"data": {"claimName": "data", "readOnly": True},
                               "out": {"claimName": "out"}}  # fmt: skip
        mounts = pod["containers"][0]["volumeMounts"]
        assert {m["mountPath"] for m in mounts} == {"/mnt/pvc/data", "/mnt/pvc/out"}
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")


async def test_a_bad_pvc_dataset_fails_validation_with_line_numbers(
    tmp_path: Path, claims: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    dataset(claims / "data" / "bad.jsonl", [GOOD, BAD_ROLE, GOOD, "{not json", GOOD])
    await api.create(FINETUNEJOB, pvc_job(tmp_path, "pvc://data/bad.jsonl"))
    await eventually(lambda: phase(clusters) == "FailedValidation")
    message = validated_message(clusters)
    assert message.startswith("2 bad lines: ")
    assert "pvc://data/bad.jsonl:2: messages[0].role" in message
    assert "pvc://data/bad.jsonl:4: invalid JSON" in message
    assert ":1:" not in message and ":3:" not in message and ":5:" not in message
    assert kubelet.runs == [(AKS, "tune-validate")]
    await eventually(lambda: validation_jobs(clusters) == [])
    await asyncio.sleep(1.0)  # several poll rounds later: still nothing started
    assert all_rayjobs(clusters) == [] and rayjobs.seen == set()


async def test_a_missing_pvc_file_is_named_and_nothing_runs(
    tmp_path: Path, claims: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(FINETUNEJOB, pvc_job(tmp_path, "pvc://data/missing.jsonl"))
    await eventually(lambda: "cannot read: pvc://data/missing.jsonl" in validated_message(clusters))
    assert phase(clusters) == "Validating" and stored(clusters)["status"]["cluster"] == AKS
    await asyncio.sleep(1.0)
    assert kubelet.runs == [(AKS, "tune-validate")]  # not re-run at every poll
    assert all_rayjobs(clusters) == [] and phase(clusters) == "Validating"


async def test_a_missing_claim_is_named_while_validation_waits(
    tmp_path: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(FINETUNEJOB, pvc_job(tmp_path, "pvc://nope/train.jsonl"))
    await eventually(
        lambda: 'persistentvolumeclaim "nope" not found' in validated_message(clusters)
    )
    assert validated_message(clusters).startswith(
        f"validating the datasets in {AKS} (Job tune-validate)"
    )
    assert phase(clusters) == "Validating" and kubelet.runs == [] and all_rayjobs(clusters) == []
    await api.delete(FINETUNEJOB, NS, "tune")
    await eventually(lambda: validation_jobs(clusters) == [])  # cancelling removes it


async def test_a_bad_claim_name_fails_validation_naming_the_field(
    tmp_path: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(FINETUNEJOB, pvc_job(tmp_path, "pvc://Data_Set/train.jsonl"))
    await eventually(lambda: phase(clusters) == "FailedValidation")
    assert validated_message(clusters).startswith(
        "spec.trainingFiles[0].uri: claim 'Data_Set' of 'pvc://Data_Set/train.jsonl' is not a "
        "valid PersistentVolumeClaim name"
    )
    assert kubelet.runs == [] and validation_jobs(clusters) == [] and all_rayjobs(clusters) == []


@pytest.fixture
async def submitting_rayjobs(clusters: Clusters) -> AsyncIterator[FakeRayJobs]:
    """KubeRay with its submitter Jobs (the fake kubelet makes their pods)."""
    fake = FakeRayJobs(clusters.all, submitters=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def ray_progress(step: int, **kw: Any) -> str:
    """A progress line as it reaches the submitter's log: forwarded from a Ray Train worker."""
    values: dict[str, Any] = {"step": step, "total_steps": 100, "percent": float(step),
                              "train_loss": 2.0 - step / 100, "updated": datetime.now(UTC)}  # fmt: skip
    line = progress_line(TrainProgress.model_validate({**values, **kw}))
    return f"(RayTrainWorker pid=311, ip=10.0.0.9) {line}\n"


async def running_with_submitter(
    tmp_path: Path, claims: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs
) -> str:
    """A pvc:// job (datasets and output on claims) Running in AKS; its submitter pod's name."""
    dataset(claims / "data" / "train.jsonl", [GOOD] * 4)
    await api.create(FINETUNEJOB, pvc_job(tmp_path, "pvc://data/train.jsonl"))
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")
    aks = clusters[AKS]

    def pod() -> str | None:
        with contextlib.suppress(LookupError):
            return rayjobs.append_log(aks, NS, "tune", "")
        return None

    return await eventually(pod)


async def test_progress_of_a_pvc_output_is_read_from_the_submitter_pods_log(
    tmp_path: Path, claims: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    submitting_rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    rayjobs, aks = submitting_rayjobs, clusters[AKS]
    pod = await running_with_submitter(tmp_path, claims, clusters, api, rayjobs)
    assert pod.startswith("tune-") and kubelet.runs[0] == (AKS, "tune-validate")
    rayjobs.append_log(aks, NS, "tune", "Waiting for Ray Dashboard GCS to become healthy ...\n")
    rayjobs.append_log(aks, NS, "tune", ray_progress(12, valid_loss=1.9, tokens_per_second=640.0))
    await eventually(lambda: (stored(clusters)["status"].get("progress") or {}).get("step") == 12)
    shown = stored(clusters)["status"]["progress"]
    assert (shown["totalSteps"], shown["percent"], shown["trainLoss"]) == (100, 12.0, 1.88)
    assert (shown["validLoss"], shown["tokensPerSecond"]) == (1.9, 640.0)
    # The next update wins; a line cut short and other output after it change nothing.
    checkpoint = {"step": 40, "uri": "pvc://out/tune/checkpoints/step-00000040",
                  "time": datetime.now(UTC).isoformat()}  # fmt: skip
    later = ray_progress(40, checkpoints=[checkpoint])
    rayjobs.append_log(aks, NS, "tune", later + "some other output\n" + later[:-30])
    await eventually(lambda: stored(clusters)["status"]["progress"]["step"] == 40)
    status = stored(clusters)["status"]
    assert status["progress"]["percent"] == 40.0 and status["phase"] == "Running"
    assert [c["step"] for c in status["checkpoints"]] == [40]
    assert not (claims / "out" / "tune").exists()  # nothing came from the claim


async def test_a_submitter_log_without_progress_leaves_progress_empty(
    tmp_path: Path, claims: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    submitting_rayjobs: FakeRayJobs, operator: OperatorRun,
) -> None:  # fmt: skip
    rayjobs, aks = submitting_rayjobs, clusters[AKS]
    pod = await running_with_submitter(tmp_path, claims, clusters, api, rayjobs)
    noise = "Waiting for Ray Dashboard GCS ...\nTRAMONTANE_PROGRESS {not json\nTraceback: boom\n"
    rayjobs.append_log(aks, NS, "tune", noise)
    await asyncio.sleep(1.0)  # five poll rounds reading that log
    status = stored(clusters)["status"]
    assert "progress" not in status and status["phase"] == "Running"
    assert condition(stored(clusters), "Running")["reason"] == "Training"
    # The submitter pod gone (its Job deleted): still no error, progress unchanged.
    rayjobs.append_log(aks, NS, "tune", ray_progress(7))
    await eventually(lambda: (stored(clusters)["status"].get("progress") or {}).get("step") == 7)
    rayjobs.submitters = False  # else KubeRay would make it again
    async with aiohttp.ClientSession() as session:
        url = f"{aks.url}/apis/batch/v1/namespaces/{NS}/jobs/tune"
        async with session.delete(url) as resp:
            assert resp.status == 200
    await eventually(
        lambda: not [p for p in aks.emulator.stored_all(PODS) if p["metadata"]["name"] == pod]
    )
    await asyncio.sleep(1.0)
    status = stored(clusters)["status"]
    assert status["progress"]["step"] == 7 and status["phase"] == "Running"
