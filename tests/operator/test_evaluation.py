"""Evaluations end to end against emulated clusters: the fake KubeRay runs the RayJob and its
submitter pod, whose log carries the evaluator's own result lines (`result_line` of the
workers' contract: the one stand-in for the real evaluator). Pending -> Running -> Passed or
Failed with scores, deltas and failing samples in the status; a bad dataset fails before any
RayJob; over quota it is Queued; a spec change (runId) runs it again; deleting it deletes its
RayJob; and the FineTuneJob deployment gate deploys the adapter only when its Evaluation
passes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fake_kubelet import FakeKubelet
from fake_rayjob import RAYJOBS, FakeRayJobs
from manifests import AKS, NS, model_deployment, operator_settings, tenant
from operator_harness import Clusters, OperatorRun, eventually
from test_finetunejob import GOOD, condition, dataset, job, write_progress
from tramontane_kube import (
    EVALUATION,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_operator.handlers.finetunejob_children import RAYJOB
from tramontane_workers.contract.eval_config import (
    EvalResult,
    FailingSample,
    MetricScore,
    config_from_b64,
)

pytestmark = pytest.mark.usefixtures("fast_poll")  # followed every 0.2 s

EVS = "tramontane.dev/v1alpha1/evaluations"
FTJS = "tramontane.dev/v1alpha1/finetunejobs"
MDS = "tramontane.dev/v1alpha1/modeldeployments"
EVENTS = "v1/events"


@pytest.fixture
async def kubelet(clusters: Clusters) -> AsyncIterator[FakeKubelet]:
    """Makes and runs the submitter Jobs' pods."""
    fake = FakeKubelet(clusters.all, {})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def rayjobs(clusters: Clusters, kubelet: FakeKubelet) -> AsyncIterator[FakeRayJobs]:
    """KubeRay with its submitter Jobs, whose pods' logs the tests write."""
    fake = FakeRayJobs(clusters.all, submitters=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def evaluation(tmp_path: Path, name: str = "qa", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "target": {"modelDeploymentRef": {"name": "chat"}, "adapterUri": "hf://acme/qa-lora"},
        "baseline": {"modelDeploymentRef": {"name": "chat"}},
        "dataset": {"uri": dataset(tmp_path / f"{name}.jsonl", [GOOD] * 3)},
        "metrics": [
            {"name": "exactMatch", "min": 0.8},
            {"name": "tokenF1", "minDelta": 0.1},
            {"name": "validationLoss", "max": 1.5, "minDelta": 0.2},
        ],
        "failingSamples": 1,
    }
    base.update(spec)
    return {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Evaluation",
            "metadata": {"name": name, "namespace": NS}, "spec": base}  # fmt: skip


def ev_status(clusters: Clusters, name: str = "qa") -> dict[str, Any]:
    obj = clusters.hub.emulator.stored(EVS, NS, name) or {}
    return dict(obj.get("status") or {})


def phase(clusters: Clusters, name: str = "qa") -> str | None:
    return ev_status(clusters, name).get("phase")


def ev_condition(clusters: Clusters, type_: str, name: str = "qa") -> dict[str, Any]:
    return condition({"status": ev_status(clusters, name)}, type_)


def rayjob(clusters: Clusters, name: str = "qa-eval") -> dict[str, Any] | None:
    return clusters[AKS].emulator.stored(RAYJOBS, NS, name)


def result(
    state: str = "succeeded",
    target: dict[str, float | None] | None = None,
    baseline: dict[str, float | None] | None = None,
    done: int = 3,
    failing: int = 0,
) -> EvalResult:
    def scores(values: dict[str, float | None] | None) -> list[MetricScore]:
        return [MetricScore(metric=m, score=s, samples=3) for m, s in (values or {}).items()]  # type: ignore[arg-type]

    return EvalResult(
        state=state,  # type: ignore[arg-type]
        samples=3,
        done=done,
        target=scores(target),
        baseline=scores(baseline),
        failing_samples=[
            FailingSample(line=i + 1, input=f"Q{i}?", expected="Paris", got="Lyon")
            for i in range(failing)
        ],
        updated=datetime.now(UTC),
    )


GOOD_SCORES = {"exactMatch": 0.9, "tokenF1": 0.8, "validationLoss": 1.0}
BASE_SCORES = {"exactMatch": 0.3, "tokenF1": 0.5, "validationLoss": 1.4}


async def submitter_pod(rayjobs: FakeRayJobs, clusters: Clusters, name: str) -> None:
    """Wait until RayJob `name`'s submitter pod exists (its log can be written)."""

    def pod() -> str | None:
        with contextlib.suppress(LookupError):
            return rayjobs.append_log(clusters[AKS], NS, name, "")
        return None

    await eventually(pod)


def events(clusters: Clusters, name: str) -> list[tuple[str, str, str]]:
    return [
        (e["type"], e["reason"], e.get("message", ""))
        for e in clusters.hub.emulator.stored_all(EVENTS)
        if e["involvedObject"].get("name") == name
    ]


async def test_an_evaluation_runs_and_passes_with_scores_and_deltas(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    await api.create(EVALUATION, evaluation(tmp_path))
    rj = await eventually(lambda: rayjob(clusters))
    await eventually(lambda: phase(clusters) == "Running")
    assert ev_status(clusters)["cluster"] == AKS
    assert ev_condition(clusters, "Validated")["reason"] == "DatasetValid"
    labels = rj["metadata"]["labels"]
    assert labels["tramontane.dev/owner-kind"] == "Evaluation"
    assert labels["tramontane.dev/owner-name"] == "qa"
    assert rj["metadata"]["annotations"]["tramontane.dev/run"] == "1"
    config = config_from_b64(rj["spec"]["entrypoint"].split()[-1])
    assert config.target.adapter_uri == "hf://acme/qa-lora"
    assert config.target.base_model_uri == "hf://mistralai/Mistral-7B-Instruct-v0.3"
    assert config.baseline is not None and config.baseline.adapter_uri is None
    assert config.metrics == ["exactMatch", "tokenF1", "validationLoss"] and config.use_gpu
    (workers,) = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == 1 and workers["rayStartParams"]["num-gpus"] == "1"
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1  # one replica's worth of the ModelDeployment's GPUs

    await submitter_pod(rayjobs, clusters, "qa-eval")
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result("running", done=1))
    await eventually(lambda: ev_status(clusters).get("done") == 1)
    assert phase(clusters) == "Running" and ev_status(clusters)["samples"] == 3
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(
        target=GOOD_SCORES, baseline=BASE_SCORES, failing=2))  # fmt: skip
    rayjobs.finish("qa-eval")
    await eventually(lambda: phase(clusters) == "Passed")
    status = ev_status(clusters)
    by_metric = {r["metric"]: r for r in status["results"]}
    assert by_metric["exactMatch"]["threshold"] == ">= 0.8" and by_metric["exactMatch"]["passed"]
    assert by_metric["tokenF1"]["delta"] == pytest.approx(0.3)
    assert by_metric["validationLoss"]["threshold"] == "<= 1.5 and delta <= -0.2"
    assert by_metric["validationLoss"]["delta"] == pytest.approx(-0.4)
    assert len(status["failingSamples"]) == 1  # spec.failingSamples
    assert status["failingSamples"][0] == {"line": 1, "input": "Q0?", "expected": "Paris",
                                           "got": "Lyon"}  # fmt: skip
    assert ev_condition(clusters, "Passed")["status"] == "True"
    assert ev_condition(clusters, "Evaluated")["reason"] == "Scored"
    assert status["completedAt"] and status["startedAt"]
    await eventually(lambda: ("Normal", "Passed", "every threshold met") in events(clusters, "qa"))
    assert any(reason == "Started" for _, reason, _ in events(clusters, "qa"))


async def test_missed_thresholds_fail_naming_each_one(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    await api.create(EVALUATION, evaluation(tmp_path))
    await eventually(lambda: rayjob(clusters))
    await submitter_pod(rayjobs, clusters, "qa-eval")
    worse = {"exactMatch": 0.5, "tokenF1": 0.55, "validationLoss": 1.3}
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(target=worse, baseline=BASE_SCORES))
    rayjobs.finish("qa-eval")
    await eventually(lambda: phase(clusters) == "Failed")
    message = ev_condition(clusters, "Passed")["message"]
    assert "exactMatch 0.5 misses >= 0.8" in message
    assert "tokenF1 0.55 misses delta >= 0.1 (baseline 0.5, delta 0.05)" in message
    assert "validationLoss 1.3 misses <= 1.5 and delta <= -0.2" in message
    assert ev_condition(clusters, "Passed")["reason"] == "ThresholdsMissed"
    await eventually(lambda: any(r == "Failed" for _, r, _ in events(clusters, "qa")))


async def test_a_bad_dataset_fails_before_any_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    bad = dataset(tmp_path / "bad.jsonl", [GOOD, "not json", {"messages": []}])
    await api.create(EVALUATION, evaluation(tmp_path, dataset={"uri": bad}))
    await eventually(lambda: phase(clusters) == "Error")
    validated = ev_condition(clusters, "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InvalidDataset"
    assert "bad.jsonl:2" in validated["message"]
    assert ev_condition(clusters, "Evaluated")["status"] == "False"
    assert [r for c in clusters.all for r in c.emulator.stored_all(RAYJOBS)] == []


async def test_over_quota_it_is_queued_then_admitted(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(TENANT, tenant({"gpus": {"H100": 1}}))
    scaling = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1}
    await api.create(MODELDEPLOYMENT, model_deployment("chat", scaling=scaling))
    await eventually(lambda: (clusters.hub.emulator.stored(MDS, NS, "chat") or {}).get(
        "status", {}).get("phase") not in (None, "Queued"))  # fmt: skip
    await api.create(EVALUATION, evaluation(tmp_path))
    await eventually(lambda: phase(clusters) == "Queued")
    status = ev_status(clusters)
    assert status["queuePosition"] == 1
    admitted = ev_condition(clusters, "Admitted")
    assert admitted["reason"] == "QuotaExceeded" and "gpus.H100" in admitted["message"]
    assert rayjob(clusters) is None
    await api.patch(TENANT, None, "team", {"spec": {"quotas": {"gpus": {"H100": 2}}}})
    await eventually(lambda: rayjob(clusters))
    await eventually(lambda: phase(clusters) == "Running")
    assert "queuePosition" not in ev_status(clusters)

    def gpus_in_use() -> int | None:
        team = clusters.hub.emulator.stored("tramontane.dev/v1alpha1/tenants", None, "team")
        return ((team or {}).get("status") or {}).get("gpusInUse")

    await eventually(lambda: gpus_in_use() == 2)  # the deployment's and the evaluation's


async def test_a_new_run_id_runs_again_and_delete_removes_the_rayjob(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    await api.create(EVALUATION, evaluation(tmp_path, runId="build-1"))
    await eventually(lambda: rayjob(clusters))
    await submitter_pod(rayjobs, clusters, "qa-eval")
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(target=GOOD_SCORES,
                                                             baseline=BASE_SCORES))  # fmt: skip
    rayjobs.finish("qa-eval")
    await eventually(lambda: phase(clusters) == "Passed")
    first_uid = (rayjob(clusters) or {})["metadata"]["uid"]

    await api.patch(EVALUATION, NS, "qa", {"spec": {"runId": "build-2"}})

    def new_run() -> bool:
        rj = rayjob(clusters)
        return rj is not None and rj["metadata"]["uid"] != first_uid

    await eventually(new_run)
    assert (rayjob(clusters) or {})["metadata"]["annotations"]["tramontane.dev/run"] == "2"
    await eventually(lambda: phase(clusters) == "Running")
    status = ev_status(clusters)
    assert status["observedGeneration"] == 2 and "results" not in status

    await api.delete(EVALUATION, NS, "qa")
    await eventually(lambda: clusters.hub.emulator.stored(EVS, NS, "qa") is None)
    assert rayjob(clusters) is None


# --- The FineTuneJob deployment gate -------------------------------------------------------


def gated_job(tmp_path: Path, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    gate = {"dataset": {"uri": dataset(tmp_path / "held-out.jsonl", [GOOD] * 3)},
            "metrics": metrics}  # fmt: skip
    spec: dict[str, Any] = {
        "baseModel": {"modelDeploymentRef": {"name": "chat"}},
        "autoDeploy": {"modelDeploymentRef": {"name": "chat"}, "adapterName": "support",
                       "evaluation": gate},
    }  # fmt: skip
    return job(tmp_path, **spec)


def ftj(clusters: Clusters) -> dict[str, Any]:
    return clusters.hub.emulator.stored(FTJS, NS, "tune") or {}


def served_adapters(clusters: Clusters) -> list[dict[str, Any]]:
    md = clusters.hub.emulator.stored(MDS, NS, "chat") or {}
    return list(md.get("spec", {}).get("adapters") or [])


async def trained(tmp_path: Path, clusters: Clusters, rayjobs: FakeRayJobs) -> str:
    """Finish the training of job `tune`; its adapter's URI."""
    await eventually(lambda: clusters[AKS].emulator.stored(RAYJOBS, NS, "tune"))
    adapter = (tmp_path / "out-tune" / "adapter").as_uri()
    write_progress(tmp_path, "tune", 100, "succeeded", adapter_uri=adapter)
    rayjobs.finish("tune")
    return adapter


async def test_a_passing_gate_deploys_the_adapter(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    await api.create(FINETUNEJOB, gated_job(tmp_path, [{"name": "exactMatch", "min": 0.8},
                                                      {"name": "tokenF1", "minDelta": 0.0}]))  # fmt: skip
    adapter = await trained(tmp_path, clusters, rayjobs)
    gate = await eventually(lambda: clusters.hub.emulator.stored(EVS, NS, "tune-gate"))
    assert gate["spec"]["target"] == {"modelDeploymentRef": {"name": "chat"},
                                      "fineTuneJobRef": {"name": "tune"}}  # fmt: skip
    assert gate["spec"]["baseline"] == {"modelDeploymentRef": {"name": "chat"}}  # Current: none
    assert gate["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    await eventually(lambda: condition(ftj(clusters), "Deployed").get("reason") == "Evaluating")
    rj = await eventually(lambda: rayjob(clusters, "tune-gate-eval"))
    assert config_from_b64(rj["spec"]["entrypoint"].split()[-1]).target.adapter_uri == adapter
    assert served_adapters(clusters) == []  # not before the gate passes

    await submitter_pod(rayjobs, clusters, "tune-gate-eval")
    rayjobs.append_result(clusters[AKS], NS, "tune-gate-eval",
                          result(target=GOOD_SCORES, baseline=BASE_SCORES))  # fmt: skip
    rayjobs.finish("tune-gate-eval")
    await eventually(lambda: condition(ftj(clusters), "Deployed").get("status") == "True")
    assert served_adapters(clusters) == [{"name": "support", "uri": adapter}]


async def test_a_failing_gate_keeps_the_adapter_out_of_service(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(MODELDEPLOYMENT, model_deployment("chat"))
    await api.create(FINETUNEJOB, gated_job(tmp_path, [{"name": "exactMatch", "min": 0.8}]))
    adapter = await trained(tmp_path, clusters, rayjobs)
    await eventually(lambda: rayjob(clusters, "tune-gate-eval"))
    await submitter_pod(rayjobs, clusters, "tune-gate-eval")
    rayjobs.append_result(clusters[AKS], NS, "tune-gate-eval",
                          result(target={"exactMatch": 0.4}, baseline={"exactMatch": 0.3}))  # fmt: skip
    rayjobs.finish("tune-gate-eval")
    await eventually(lambda: condition(ftj(clusters), "Deployed").get("status") == "False")
    deployed = condition(ftj(clusters), "Deployed")
    assert deployed["reason"] == "EvaluationFailed"
    assert "exactMatch 0.4 misses >= 0.8" in deployed["message"]
    assert adapter in deployed["message"]  # stored there, not served
    assert ftj(clusters)["status"]["phase"] == "Succeeded"
    assert ftj(clusters)["status"]["adapter"]["uri"] == adapter
    assert served_adapters(clusters) == []
    await eventually(lambda: any(r == "EvaluationFailed" for _, r, _ in events(clusters, "tune")))


async def test_a_claim_dataset_is_validated_by_a_job_in_its_cluster_before_any_gpu(
    tmp_path: Path, clusters: Clusters, api: KubeClient, operator: OperatorRun
) -> None:
    claims = tmp_path / "claims-aks"
    (claims / "data").mkdir(parents=True)
    dataset(claims / "data" / "good.jsonl", [GOOD] * 3)
    dataset(claims / "data" / "bad.jsonl", [GOOD, "not json"])
    kubelet = FakeKubelet(clusters.all, {AKS: claims})  # really runs the validation command
    fake = FakeRayJobs(clusters.all)
    await kubelet.start()
    await fake.start()
    try:
        await api.create(MODELDEPLOYMENT, model_deployment("chat"))
        for name in ("good", "bad"):
            await api.create(EVALUATION, evaluation(
                tmp_path, name, dataset={"uri": f"pvc://data/{name}.jsonl"}))  # fmt: skip
        await eventually(lambda: phase(clusters, "bad") == "Error", timeout_s=30)
        validated = ev_condition(clusters, "Validated", "bad")
        assert validated["reason"] == "InvalidDataset" and "bad.jsonl:2" in validated["message"]
        rj = await eventually(lambda: rayjob(clusters, "good-eval"), timeout_s=30)
        assert ev_condition(clusters, "Validated", "good")["reason"] == "DatasetValid"
        assert (AKS, "good-eval-validate") in kubelet.runs and (
            AKS,
            "bad-eval-validate",
        ) in kubelet.runs
        pod = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
        assert {"name": pod["volumes"][0]["name"],
                "persistentVolumeClaim": {"claimName": "data", "readOnly": True}} in pod["volumes"]  # fmt: skip
        assert rayjob(clusters, "bad-eval") is None  # never a GPU for a bad dataset
        await eventually(lambda: clusters[AKS].emulator.stored(
            "batch/v1/jobs", NS, "good-eval-validate") is None)  # fmt: skip
    finally:
        await fake.stop()
        await kubelet.stop()


async def test_a_restart_counts_a_running_evaluation_and_the_sweep_removes_orphans(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(TENANT, tenant({"gpus": {"H100": 2}}))
    scaling = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1}
    await api.create(MODELDEPLOYMENT, model_deployment("chat", scaling=scaling))
    await api.create(EVALUATION, evaluation(tmp_path))
    await eventually(lambda: phase(clusters) == "Running")
    await operator.kill()
    # While it is down a second evaluation arrives: the deployment and the first one hold both
    # GPUs, so after the restart it must wait (the running one's RayJob is counted again).
    await api.create(EVALUATION, evaluation(tmp_path, "second"))
    # And a RayJob of an Evaluation deleted meanwhile is left in the member.
    live = rayjob(clusters)
    assert live is not None
    labels = {**live["metadata"]["labels"], "tramontane.dev/owner-name": "gone",
              "tramontane.dev/owner-uid": "0000"}  # fmt: skip
    orphan = {"apiVersion": "ray.io/v1", "kind": "RayJob", "spec": live["spec"],
              "metadata": {"name": "gone-eval", "namespace": NS, "labels": labels}}  # fmt: skip
    member = KubeClient("aks", ClusterConfig(server=clusters[AKS].url), attempts=1)
    try:
        await member.create(RAYJOB, orphan)
    finally:
        await member.close()
    await operator.start()
    await eventually(lambda: rayjob(clusters, "gone-eval") is None, timeout_s=20)  # swept
    await eventually(lambda: phase(clusters, "second") == "Queued", timeout_s=20)
    assert ev_status(clusters, "second")["queuePosition"] == 1
    assert rayjob(clusters, "second-eval") is None and phase(clusters) == "Running"
    # The first one's run ends: its GPUs go to the second one.
    await submitter_pod(rayjobs, clusters, "qa-eval")
    rayjobs.append_result(clusters[AKS], NS, "qa-eval", result(target=GOOD_SCORES,
                                                             baseline=BASE_SCORES))  # fmt: skip
    rayjobs.finish("qa-eval")
    await eventually(lambda: phase(clusters) == "Passed")
    await eventually(lambda: rayjob(clusters, "second-eval"), timeout_s=20)


async def test_evaluations_and_fine_tune_jobs_share_one_queue(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    operator: OperatorRun,
) -> None:  # fmt: skip
    await api.create(TENANT, tenant({"gpus": {"H100": 2}}))
    scaling = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1}
    await api.create(MODELDEPLOYMENT, model_deployment("chat", scaling=scaling))
    await api.create(FINETUNEJOB, job(tmp_path, "tune"))
    await eventually(lambda: clusters[AKS].emulator.stored(RAYJOBS, NS, "tune"))
    await api.create(EVALUATION, evaluation(tmp_path))  # the quota is full: it waits first
    await eventually(lambda: phase(clusters) == "Queued")
    await api.create(FINETUNEJOB, job(tmp_path, "next"))  # then this one, behind it

    def job_status(name: str) -> dict[str, Any]:
        return dict((clusters.hub.emulator.stored(FTJS, NS, name) or {}).get("status") or {})

    await eventually(lambda: job_status("next").get("queuePosition") == 2)
    assert ev_status(clusters)["queuePosition"] == 1
    # A ModelDeployment's admission sees the same queue: it waits behind both.
    await api.create(MODELDEPLOYMENT, model_deployment("later", scaling=scaling))

    def md_status(name: str) -> dict[str, Any]:
        return dict((clusters.hub.emulator.stored(MDS, NS, name) or {}).get("status") or {})

    await eventually(lambda: md_status("later").get("queuePosition") == 3)
    rayjobs.finish("tune")  # its GPU goes to the older waiting workload: the evaluation
    await eventually(lambda: rayjob(clusters))
    await eventually(lambda: job_status("next").get("queuePosition") == 1)
    assert clusters[AKS].emulator.stored(RAYJOBS, NS, "next") is None


async def test_outside_local_mode_a_file_dataset_is_refused_and_never_read(
    tmp_path: Path, clusters: Clusters, api: KubeClient, rayjobs: FakeRayJobs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from tramontane_operator.handlers import evaluation as handler

    reads: list[str] = []
    monkeypatch.setattr(handler, "validate_files", lambda *a, **k: reads.append("read"))
    run = OperatorRun(operator_settings(clusters.hub.url, local_mode=False))
    await run.start()
    try:
        await api.create(MODELDEPLOYMENT, model_deployment("chat"))
        await api.create(EVALUATION, evaluation(tmp_path))  # its dataset is a file:// URI
        await eventually(lambda: phase(clusters) == "Error")
    finally:
        await run.stop()
    evaluated = ev_condition(clusters, "Evaluated")
    assert evaluated["reason"] == "LocalPathRefused"
    assert evaluated["message"].startswith("spec.dataset.uri: file:// URIs are read only in local")
    assert reads == [] and [r for c in clusters.all for r in c.emulator.stored_all(RAYJOBS)] == []
    assert [j for c in clusters.all for j in c.emulator.stored_all("batch/v1/jobs")] == []
