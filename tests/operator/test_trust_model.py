"""The trust model end to end (docs/trust-model.md): the operator reads no tenant data under its
own identity. Outside local mode a FineTuneJob naming `file://` URIs fails at once with
`LocalPathRefused` and nothing is read, not even a file that exists; an object-store dataset is
validated by a Job in the member cluster, in the job's namespace — never by the operator, local
mode or not; and an object-store output's progress comes from the submitter pod's log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fake_kubelet import JOBS, FakeKubelet
from fake_rayjob import FakeRayJobs
from manifests import AKS, NS, model_deployment, operator_settings
from operator_harness import Clusters, OperatorRun, eventually
from test_finetunejob import GOOD, all_rayjobs, condition, dataset, job, phase, stored
from test_finetunejob_pvc import ray_progress, submitting_rayjobs, validation_jobs
from tramontane_kube import FINETUNEJOB, MODELDEPLOYMENT, KubeClient
from tramontane_operator.builders.validation_job import MAX_FILE_BYTES
from tramontane_operator.handlers import finetunejob_io
from tramontane_workers.contract.datasets_report import validate_files

__all__ = ["submitting_rayjobs"]  # a fixture, used below

pytestmark = pytest.mark.usefixtures("fast_poll")  # jobs followed every 0.2 s

SECRET = "s3cr3t-token-of-the-operator"


@pytest.fixture
def operator_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call the operator makes into its local-file seam (it runs in this process)."""
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def called(*args: Any) -> Any:
            calls.append(name)
            return real(*args)

        return called

    for name in ("validate_datasets", "read_progress", "model_params"):
        monkeypatch.setattr(finetunejob_io, name, spy(name, getattr(finetunejob_io, name)))
    return calls


@contextlib.asynccontextmanager
async def running(clusters: Clusters, local_mode: bool) -> AsyncIterator[OperatorRun]:
    run = OperatorRun(operator_settings(clusters.hub.url, local_mode=local_mode))
    await run.start()
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture
async def shared_cluster_operator(
    clusters: Clusters, api: KubeClient
) -> AsyncIterator[OperatorRun]:
    """The operator as a shared cluster runs it: local mode off."""
    async with running(clusters, local_mode=False) as run:
        yield run


async def test_outside_local_mode_a_file_dataset_is_refused_and_never_read(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator_reads: list[str], shared_cluster_operator: OperatorRun,
) -> None:  # fmt: skip
    # A file the operator could read, standing for its own token: read, it would show in the
    # Validated condition (the role is echoed in the bad line's message).
    secret = tmp_path / "token"
    leak = {"messages": [{"role": SECRET, "content": "x"}, {"role": "assistant", "content": "y"}]}
    data = dataset(secret, [leak])
    assert SECRET in validate_files([data], []).errors[0].message  # what reading would leak
    await api.create(FINETUNEJOB, job(tmp_path, data=data))
    await eventually(lambda: phase(clusters) == "FailedValidation")
    validated = condition(stored(clusters), "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "LocalPathRefused")
    message = validated["message"]
    assert message.startswith("spec.trainingFiles[0].uri: file:// URIs are read only in local mode")
    assert "use pvc://, s3://, gs:// or az://" in message
    assert "spec.output.uri: file:// URIs are read only in local mode" in message
    assert condition(stored(clusters), "Failed")["reason"] == "LocalPathRefused"
    await asyncio.sleep(1.0)  # several poll rounds later: still nothing read, nothing started
    assert SECRET not in str(stored(clusters))
    assert operator_reads == []
    assert all_rayjobs(clusters) == [] and rayjobs.seen == set()
    assert validation_jobs(clusters) == []
    assert phase(clusters) == "FailedValidation"


async def test_a_local_base_model_appearing_after_validation_is_refused_before_a_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator_reads: list[str], shared_cluster_operator: OperatorRun,
) -> None:  # fmt: skip
    claims = tmp_path / "claims"
    (claims / "data").mkdir(parents=True)
    dataset(claims / "data" / "t.jsonl", [GOOD] * 2)
    kubelet = FakeKubelet(clusters.all, {AKS: claims})
    await kubelet.start()
    try:
        spec = {"baseModel": {"modelDeploymentRef": {"name": "chat"}},
                "output": {"uri": "pvc://data/out"}}  # fmt: skip
        await api.create(FINETUNEJOB, job(tmp_path, data="pvc://data/t.jsonl", **spec))
        # Validated in AKS by its Job; then Pending: the ModelDeployment is not there yet.
        await eventually(lambda: condition(stored(clusters), "Validated").get("status") == "True")
        await eventually(lambda: phase(clusters) == "Pending")
        model = {"name": "mistral-7b", "source": (tmp_path / "model").as_uri()}
        await api.create(MODELDEPLOYMENT, model_deployment("chat", model=model))
        await eventually(lambda: phase(clusters) == "FailedValidation")
    finally:
        await kubelet.stop()
    validated = condition(stored(clusters), "Validated")
    assert validated["reason"] == "LocalPathRefused"
    assert validated["message"].startswith("spec.baseModel.modelDeploymentRef (the ModelDeploy")
    assert all_rayjobs(clusters) == [] and operator_reads == []


@pytest.mark.parametrize("local_mode", [False, True])
async def test_an_object_store_dataset_is_validated_by_a_job_in_its_member_cluster(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator_reads: list[str], local_mode: bool,
) -> None:  # fmt: skip
    spec = {"validationFiles": [{"uri": "gs://held-out/valid.jsonl"}],
            "output": {"uri": "s3://bucket/out/tune"}}  # fmt: skip
    async with running(clusters, local_mode):
        await api.create(FINETUNEJOB, job(tmp_path, data="s3://bucket/x.jsonl", **spec))
        await eventually(lambda: validation_jobs(clusters) == [(AKS, "tune-validate")])
        vjob = clusters[AKS].emulator.stored(JOBS, NS, "tune-validate")
        assert vjob is not None
        await eventually(lambda: "Job tune-validate" in validated_message(clusters))
        await asyncio.sleep(0.5)  # a few poll rounds: it waits for the Job, reading nothing
    assert vjob["metadata"]["namespace"] == NS  # the tenant's namespace, its identity
    assert vjob["metadata"]["labels"]["tramontane.dev/owner-name"] == "tune"
    spec_ = vjob["spec"]
    assert spec_["activeDeadlineSeconds"] > 0 and spec_["backoffLimit"] == 0
    pod = spec_["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[command.index("--training") + 1] == "s3://bucket/x.jsonl"
    assert command[command.index("--validation") + 1] == "gs://held-out/valid.jsonl"
    assert command[command.index("--max-file-bytes") + 1] == str(MAX_FILE_BYTES)
    assert "volumes" not in pod and "volumeMounts" not in container  # nothing to mount
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert phase(clusters) == "Validating" and stored(clusters)["status"]["cluster"] == AKS
    assert operator_reads == [] and all_rayjobs(clusters) == []


def validated_message(clusters: Clusters) -> str:
    return str(condition(stored(clusters), "Validated").get("message", ""))


@pytest.fixture
async def kubelet(clusters: Clusters) -> AsyncIterator[FakeKubelet]:
    """Makes and runs the submitter Jobs' pods (no claims anywhere)."""
    fake = FakeKubelet(clusters.all, {})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_progress_of_an_object_store_output_comes_from_the_submitter_log(
    tmp_path: Path, clusters: Clusters, api: KubeClient, kubelet: FakeKubelet,
    submitting_rayjobs: FakeRayJobs, operator_reads: list[str], operator: OperatorRun,
) -> None:  # fmt: skip
    rayjobs, aks = submitting_rayjobs, clusters[AKS]
    # Local mode (the `operator` fixture): the file:// dataset is validated here, the base
    # model on the hub is not read, and the s3:// output is not read either.
    data = dataset(tmp_path / "train.jsonl", [GOOD] * 4)
    await api.create(FINETUNEJOB, job(tmp_path, data=data, output={"uri": "s3://bucket/out"}))
    await eventually(lambda: condition(stored(clusters), "Running").get("reason") == "Training")
    assert "not read by the operator (trust model)" in validated_message(clusters)

    def pod() -> str | None:
        with contextlib.suppress(LookupError):
            return rayjobs.append_log(aks, NS, "tune", "")
        return None

    await eventually(pod)
    rayjobs.append_log(aks, NS, "tune", ray_progress(25))
    await eventually(lambda: (stored(clusters)["status"].get("progress") or {}).get("step") == 25)
    assert set(operator_reads) == {"validate_datasets"}  # never progress.json, never the model
