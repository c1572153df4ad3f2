"""Evaluations, pure parts: thresholds (absolute, minDelta, lower-is-better), the verdict, the
phase machine (observed -> status and actions), model resolution, the RayJob and validation
Job builders, and the FineTuneJob deployment gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.unit.test_builders_rayjob import MEMBER, SETTINGS, make_job, rayjob_validator

from tramontane_api.v1alpha1 import Evaluation, EvaluationStatus, FineTuneJob, ModelDeployment
from tramontane_api.v1alpha1.evaluation import MetricThreshold
from tramontane_api.v1alpha1.finetunejob import AdapterStatus, FineTuneJobStatus
from tramontane_operator.builders.evaluation_rayjob import (
    build_eval_config,
    build_eval_rayjob,
    build_eval_validation_job,
    eval_rayjob_name,
)
from tramontane_operator.builders.validation_job import REPORT_MODULE
from tramontane_operator.reconcile.evaluation import (
    ADMITTED,
    EVALUATED,
    PASSED,
    VALIDATED,
    Decision,
    Observed,
    decide,
    holds_quota,
    judge,
    missed,
    passes,
    threshold_text,
)
from tramontane_operator.reconcile.evaluation_inputs import (
    EvalValidation,
    Resolution,
    eval_workload,
    queued_workloads,
    resolve,
    validation_of,
)
from tramontane_operator.reconcile.finetunejob import DEPLOYED
from tramontane_operator.reconcile.finetunejob import Observed as JobObserved
from tramontane_operator.reconcile.finetunejob import decide as decide_job
from tramontane_operator.reconcile.finetunejob_deploy import (
    GATE_OF_LABEL,
    GateOutcome,
    gate_evaluation,
    gate_name,
    gate_outcome,
)
from tramontane_operator.reconcile.finetunejob_inputs import (
    AdmissionResult,
    JobPlacement,
    ValidationResult,
)
from tramontane_workers.contract.datasets_report import validate_files
from tramontane_workers.contract.eval_config import (
    EvalResult,
    EvalTarget,
    FailingSample,
    MetricScore,
    config_from_b64,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
BASE_URI = "hf://mistralai/Mistral-7B-Instruct-v0.3"
METRICS: list[dict[str, Any]] = [
    {"name": "exactMatch", "min": 0.8},
    {"name": "tokenF1", "minDelta": 0.05},
    {"name": "validationLoss", "max": 1.5, "minDelta": 0.2},
]


def make_md(name: str = "chat", **spec: Any) -> ModelDeployment:
    base: dict[str, Any] = {
        "model": {"name": "mistral-7b", "source": BASE_URI},
        "resources": {"gpu": {"type": "H100", "count": 2}, "cpu": "8", "memory": "64Gi"},
        "runtime": {"tensorParallelSize": 2, "maxModelLen": 8192},
    }
    base.update(spec)
    return ModelDeployment.model_validate(
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": name, "namespace": "team-a"}, "spec": base}
    )  # fmt: skip


def make_ev(generation: int = 1, name: str = "qa", **spec: Any) -> Evaluation:
    base: dict[str, Any] = {
        "target": {"modelDeploymentRef": {"name": "chat"}, "adapter": "support"},
        "baseline": {"modelDeploymentRef": {"name": "chat"}},
        "dataset": {"uri": "s3://data/held-out.jsonl"},
        "metrics": METRICS,
        "failingSamples": 2,
    }
    base.update(spec)
    meta = {"name": name, "namespace": "team-a", "generation": generation, "uid": "uid-ev"}
    return Evaluation.model_validate(
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Evaluation", "metadata": meta,
         "spec": base}
    )  # fmt: skip


def result(
    state: str = "succeeded",
    target: dict[str, float | None] | None = None,
    baseline: dict[str, float | None] | None = None,
    failing: int = 0,
) -> EvalResult:
    def scores(values: dict[str, float | None] | None) -> list[MetricScore]:
        return [MetricScore.model_validate({"metric": m, "score": s, "samples": 10})
                for m, s in (values or {}).items()]  # fmt: skip

    return EvalResult.model_validate(
        {
            "state": state, "samples": 10, "done": 10 if state != "running" else 4,
            "target": scores(target), "baseline": scores(baseline),
            "failing_samples": [FailingSample(line=i + 1, input="q", expected="a", got="b")
                                for i in range(failing)],
            "updated": T0,
        }
    )  # fmt: skip


GOOD = {"exactMatch": 0.9, "tokenF1": 0.7, "validationLoss": 1.0}
BASE = {"exactMatch": 0.4, "tokenF1": 0.6, "validationLoss": 1.3}
TARGET = EvalTarget(label="chat:support", base_model_uri=BASE_URI, adapter_uri="s3://a/adapter")
RESOLVED = Resolution(
    target=TARGET,
    baseline=EvalTarget(label="chat", base_model_uri=BASE_URI),
    model_deployment=make_md(),
)
VALID = EvalValidation(True, "10 lines valid")
ADMIT = AdmissionResult(admitted=True)
PLACED = JobPlacement("aks", "placed in aks")


def rayjob(deployment: str, job: str = "", run: str = "1", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"tramontane.dev/run": run}},
        "status": {"jobDeploymentStatus": deployment, "jobStatus": job, **status},
    }


def conds(decision: Decision) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in decision.status.conditions or []}


def with_status(ev: Evaluation, decision: Decision) -> Evaluation:
    return ev.model_copy(update={"status": decision.status})


# --- Thresholds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "score", "baseline", "text", "verdict"),
    [
        ({"name": "exactMatch", "min": 0.8}, 0.8, None, ">= 0.8", True),
        ({"name": "exactMatch", "min": 0.8}, 0.79, None, ">= 0.8", False),
        ({"name": "exactMatch", "max": 0.5}, 0.6, None, "<= 0.5", False),
        ({"name": "tokenF1", "minDelta": 0.05}, 0.7, 0.6, "delta >= 0.05", True),
        ({"name": "tokenF1", "minDelta": 0.05}, 0.62, 0.6, "delta >= 0.05", False),
        ({"name": "tokenF1", "minDelta": -0.02}, 0.59, 0.6, "delta >= -0.02", True),
        # Lower is better: the loss must fall by minDelta.
        ({"name": "validationLoss", "minDelta": 0.2}, 1.0, 1.3, "delta <= -0.2", True),
        ({"name": "validationLoss", "minDelta": 0.2}, 1.2, 1.3, "delta <= -0.2", False),
        ({"name": "validationLoss", "minDelta": 0.2}, 1.6, 1.3, "delta <= -0.2", False),
        ({"name": "validationLoss", "max": 1.5}, 1.4, None, "<= 1.5", True),
        ({"name": "exactMatch", "min": 0.5, "max": 0.9}, 0.95, None, ">= 0.5 and <= 0.9", False),
        # No score (no sample applies) misses a threshold; no baseline misses minDelta.
        ({"name": "toolCallAccuracy", "min": 0.5}, None, None, ">= 0.5", False),
        ({"name": "tokenF1", "minDelta": 0.0}, 0.7, None, "delta >= 0", False),
        ({"name": "tokenF1"}, 0.1, None, None, None),
    ],
)
def test_thresholds(
    threshold: dict[str, Any], score: float | None, baseline: float | None, text: str | None,
    verdict: bool | None,
) -> None:  # fmt: skip
    t = MetricThreshold.model_validate(threshold)
    assert threshold_text(t) == text
    assert passes(t, score, baseline) is verdict


def test_judge_reports_scores_deltas_and_each_missed_threshold() -> None:
    metrics = make_ev().spec.metrics
    worse = {"exactMatch": 0.5, "tokenF1": 0.62, "validationLoss": 1.2}
    results = judge(metrics, result(target=worse, baseline=BASE))
    by = {r.metric: r for r in results}
    assert by["tokenF1"].delta == pytest.approx(0.02) and by["tokenF1"].passed is False
    assert (
        by["validationLoss"].delta == pytest.approx(-0.1) and by["validationLoss"].passed is False
    )
    assert by["exactMatch"].baseline == 0.4 and by["exactMatch"].samples == 10
    assert missed(results) == [
        "exactMatch 0.5 misses >= 0.8 (baseline 0.4, delta 0.1)",
        "tokenF1 0.62 misses delta >= 0.05 (baseline 0.6, delta 0.02)",
        "validationLoss 1.2 misses <= 1.5 and delta <= -0.2 (baseline 1.3, delta -0.1)",
    ]
    assert missed(judge(metrics, result(target=GOOD, baseline=BASE))) == []


# --- The phase machine -----------------------------------------------------------------------


def test_waiting_for_the_models_is_pending_and_creates_nothing() -> None:
    waiting = Resolution(waiting="spec.target.modelDeploymentRef: ModelDeployment chat not found")
    d = decide(make_ev(), Observed(resolution=waiting), T0)
    assert d.phase == "Pending" and d.actions == ()
    assert conds(d)[EVALUATED] == ("Unknown", "WaitingForInputs")
    assert "chat not found" in (d.status.message or "")


def test_a_model_that_can_never_resolve_is_an_error() -> None:
    broken = Resolution(error="spec.target.fineTuneJobRef: FineTuneJob t ended (Failed)")
    d = decide(make_ev(), Observed(resolution=broken), T0)
    assert d.phase == "Error" and conds(d)[EVALUATED] == ("False", "InvalidInput")


def test_validation_comes_first_then_admission_then_the_rayjob() -> None:
    ev = make_ev()
    d = decide(ev, Observed(resolution=RESOLVED, validating="validating in aks"), T0)
    assert d.phase == "Pending" and d.actions == ("validate",)
    assert conds(d)[VALIDATED] == ("Unknown", "Validating")
    queued = AdmissionResult(False, 2, "quota gpus.H100: needs 2, 8 of 8 in use")
    d = decide(ev, Observed(resolution=RESOLVED, validation=VALID, admission=queued), T0)
    assert d.phase == "Queued" and d.status.queue_position == 2 and d.actions == ()
    assert conds(d)[ADMITTED] == ("False", "QuotaExceeded")
    assert conds(d)[VALIDATED] == ("True", "DatasetValid")
    ev = with_status(ev, d)  # validated: not again
    unplaced = JobPlacement(None, "no eligible cluster (aks: 0 free H100 of 2 needed)")
    d = decide(ev, Observed(resolution=RESOLVED, admission=ADMIT, placement=unplaced), T0)
    assert d.phase == "Queued" and conds(d)[ADMITTED] == ("False", "NoEligibleCluster")
    assert d.status.queue_position is None
    d = decide(ev, Observed(resolution=RESOLVED, admission=ADMIT, placement=PLACED), T1)
    assert d.phase == "Running" and d.actions == ("create_rayjob",)
    assert (d.status.cluster, d.status.ray_job, d.status.started_at) == ("aks", "qa-eval", T1)
    assert holds_quota(d.status)


def test_an_invalid_dataset_is_an_error_without_a_rayjob() -> None:
    bad = EvalValidation(False, "2 bad lines: s3://data/held-out.jsonl:3: ...")
    d = decide(make_ev(), Observed(resolution=RESOLVED, validation=bad, admission=ADMIT,
                                   placement=PLACED), T0)  # fmt: skip
    assert d.phase == "Error" and d.actions == ()
    assert conds(d)[VALIDATED] == ("False", "InvalidDataset")
    assert not holds_quota(d.status)


def running(ev: Evaluation | None = None) -> Evaluation:
    ev = ev or make_ev()
    d = decide(ev, Observed(resolution=RESOLVED, validation=VALID, admission=ADMIT,
                            placement=PLACED), T0)  # fmt: skip
    return with_status(ev, d)


def test_progress_then_a_passing_result() -> None:
    ev = running()
    d = decide(ev, Observed(rayjob=rayjob("Running", "RUNNING"), result=result("running")), T0)
    assert d.phase == "Running" and (d.status.samples, d.status.done) == (10, 4)
    assert conds(d)[EVALUATED] == ("Unknown", "Running") and d.status.cluster == "aks"
    ev = with_status(ev, d)
    done = result(target=GOOD, baseline=BASE, failing=4)
    d = decide(ev, Observed(rayjob=rayjob("Running", "RUNNING"), result=done), T1)
    assert d.phase == "Passed" and conds(d)[PASSED] == ("True", "ThresholdsMet")
    assert len(d.status.failing_samples or []) == 2  # spec.failingSamples
    assert d.status.completed_at == T1 and not holds_quota(d.status)
    results = {r.metric: r for r in d.status.results or []}
    assert results["tokenF1"].delta == pytest.approx(0.1) and results["tokenF1"].passed
    # Finished: nothing more happens for this generation, whatever is observed.
    ev = with_status(ev, d)
    assert decide(ev, Observed(rayjob=rayjob("Complete", "SUCCEEDED")), T1) == Decision(ev.status)  # type: ignore[arg-type]


def test_a_failing_result_names_the_thresholds() -> None:
    worse = {"exactMatch": 0.5, "tokenF1": 0.7, "validationLoss": 1.0}
    d = decide(running(), Observed(rayjob=rayjob("Complete", "SUCCEEDED"),
                                   result=result(target=worse, baseline=BASE)), T1)  # fmt: skip
    assert d.phase == "Failed" and conds(d)[PASSED] == ("False", "ThresholdsMissed")
    assert d.status.message == "exactMatch 0.5 misses >= 0.8 (baseline 0.4, delta 0.1)"


@pytest.mark.parametrize(
    ("observed", "reason", "message"),
    [
        (Observed(rayjob=rayjob("Failed", "FAILED", message="OOMKilled")), "RunFailed", "OOMKilled"),
        (
            Observed(rayjob=rayjob("Running", "RUNNING"),
                     result=result("failed").model_copy(update={"message": "CUDA OOM"})),
            "RunFailed", "CUDA OOM",
        ),
        (Observed(rayjob=rayjob("Complete", "SUCCEEDED")), "NoResult", "holds no result"),
    ],
)  # fmt: skip
def test_runs_that_end_without_scores_are_errors(
    observed: Observed, reason: str, message: str
) -> None:
    d = decide(running(), observed, T1)
    assert d.phase == "Error" and conds(d)[EVALUATED] == ("False", reason)
    assert message in (d.status.message or "")


def test_a_spec_change_is_a_new_run() -> None:
    ev = running()
    d = decide(ev, Observed(rayjob=rayjob("Complete", "SUCCEEDED"),
                            result=result(target=GOOD, baseline=BASE)), T0)  # fmt: skip
    ev = with_status(make_ev(generation=2, runId="build-2"), d)
    # The previous run's RayJob (rendered for generation 1) goes first.
    d = decide(ev, Observed(rayjob=rayjob("Complete", "SUCCEEDED", run="1")), T1)
    assert d.phase == "Pending" and d.actions == ("replace_rayjob",)
    assert d.status.results is None and d.status.observed_generation == 2
    assert d.status.cluster == "aks"  # where the old RayJob is, until it is gone
    ev = with_status(ev, d)
    d = decide(ev, Observed(resolution=RESOLVED, validation=VALID, admission=ADMIT,
                            placement=PLACED), T1)  # fmt: skip
    assert d.phase == "Running" and d.actions == ("create_rayjob",)


def test_deleting_deletes_the_rayjob_and_keeps_the_status() -> None:
    ev = running()
    d = decide(ev, Observed(rayjob=rayjob("Running", "RUNNING"), deleting=True), T1)
    assert d.actions == ("delete_rayjob",) and d.status == ev.status
    assert decide(ev, Observed(deleting=True), T1).actions == ()


# --- Inputs ----------------------------------------------------------------------------------


def succeeded_job(name: str, uri: str | None) -> FineTuneJob:
    job = make_job(uid=None).model_copy(update={"metadata": make_job().metadata.model_copy(
        update={"name": name})})  # fmt: skip
    status = FineTuneJobStatus(
        phase="Succeeded" if uri else "Failed",
        adapter=AdapterStatus(uri=uri) if uri else None,
    )
    return job.model_copy(update={"status": status})


def test_resolve_an_adapter_by_name_uri_or_job() -> None:
    adapters = [{"name": "support", "uri": "s3://a/support"},
                {"name": "tuned", "fineTuneJobRef": {"name": "tune"}}]  # fmt: skip
    mds = {"chat": make_md(adapters=adapters)}
    jobs = {
        "tune": succeeded_job("tune", "s3://out/tune/adapter"),
        "bad": succeeded_job("bad", None),
    }
    got = resolve(make_ev(), mds, jobs, local_mode=False)
    assert got.target == EvalTarget(label="chat:support", base_model_uri=BASE_URI,
                                    adapter_uri="s3://a/support")  # fmt: skip
    assert got.baseline is not None and got.baseline.adapter_uri is None
    target = {"modelDeploymentRef": {"name": "chat"}, "adapter": "tuned"}
    got = resolve(make_ev(target=target), mds, jobs, local_mode=False)
    assert got.target is not None and got.target.adapter_uri == "s3://out/tune/adapter"
    target = {"modelDeploymentRef": {"name": "chat"}, "fineTuneJobRef": {"name": "bad"}}
    got = resolve(make_ev(target=target), mds, jobs, local_mode=False)
    assert got.error is not None and "ended (Failed) without an adapter" in got.error
    target = {"modelDeploymentRef": {"name": "chat"}, "adapter": "nope"}
    got = resolve(make_ev(target=target), mds, jobs, local_mode=False)
    assert got.waiting == "spec.target.adapter: ModelDeployment chat serves no adapter nope"
    got = resolve(make_ev(), {}, jobs, local_mode=False)
    assert got.waiting is not None and "ModelDeployment chat not found" in got.waiting


def test_local_files_are_refused_outside_local_mode() -> None:
    mds = {"chat": make_md(adapters=[{"name": "support", "uri": "s3://a/support"}])}
    ev = make_ev(dataset={"uri": "file:///etc/passwd"})
    refused = resolve(ev, mds, {}, local_mode=False)
    assert refused.reason == "LocalPathRefused" and refused.error is not None
    assert refused.error.startswith("spec.dataset.uri: file:// URIs are read only in local mode")
    assert resolve(ev, mds, {}, local_mode=True).target is not None


def test_the_workload_is_one_pool_of_the_deployments_gpus() -> None:
    w = eval_workload(make_ev(), make_md(), T0, admitted=True, cluster="aks")
    assert (w.kind, dict(w.gpus), dict(w.clusters)) == (
        "Evaluation",
        {"H100": 2},
        {"aks": {"H100": 2}},
    )
    cpu = make_md(resources={"cpu": "4"}, runtime={"engine": "transformers"})
    assert dict(eval_workload(make_ev(), cpu, T0, admitted=False).gpus) == {}


def test_validation_of_the_workers_report(tmp_path: Any) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "q"}, '
                    '{"role": "assistant", "content": "a"}]}\n')  # fmt: skip
    assert validation_of(validate_files([good.as_uri()], [])) == EvalValidation(
        True, "1 lines valid"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    found = validation_of(validate_files([bad.as_uri()], []))
    assert found is not None and not found.ok and "bad.jsonl:1" in found.message
    assert validation_of(validate_files([(tmp_path / "missing.jsonl").as_uri()], [])) is None
    assert ValidationResult(False, ("x",), bad_lines=1).message() == "1 bad lines: x"


# --- Builders --------------------------------------------------------------------------------


def test_the_rayjob_runs_the_evaluator_on_one_replica_of_the_deployment() -> None:
    md = make_md(resources={"gpu": {"type": "H100", "count": 2}, "cpu": "8", "memory": "64Gi",
                            "nodeSelector": {"pool": "gpu"}})  # fmt: skip
    ev = make_ev(dataset={"uri": "pvc://data/held-out.jsonl"}, maxSamples=50)
    config = build_eval_config(ev, TARGET, RESOLVED.baseline, md)
    obj = build_eval_rayjob(ev, config, md, MEMBER, SETTINGS, "team")
    assert rayjob_validator().validate(obj) == []
    assert obj["metadata"]["name"] == "qa-eval"
    assert obj["metadata"]["annotations"] == {"tramontane.dev/run": "1"}
    assert obj["metadata"]["labels"]["tramontane.dev/owner-kind"] == "Evaluation"
    spec = obj["spec"]
    decoded = config_from_b64(spec["entrypoint"].split()[-1])
    assert decoded == config and decoded.use_gpu and decoded.max_model_len == 8192
    assert decoded.max_samples == 50 and decoded.failing_samples == 2
    assert spec["backoffLimit"] == 0 and spec["shutdownAfterJobFinishes"] is True
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert group["replicas"] == 1 and group["rayStartParams"]["num-gpus"] == "2"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert "submitterPodTemplate" in spec
    long = make_ev(name="q" * 47)
    assert len(eval_rayjob_name(long)) <= 52


def test_the_validation_job_checks_the_dataset_with_the_workers_rules() -> None:
    ev = make_ev(dataset={"uri": "pvc://data/held-out.jsonl"})
    job = build_eval_validation_job(ev, MEMBER, SETTINGS, "team")
    assert job["metadata"]["name"] == "qa-eval-validate"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:4] == ["python", "-m", REPORT_MODULE, "--evaluation"]  # its rules
    assert command[command.index("--training") + 1] == "pvc://data/held-out.jsonl"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    with pytest.raises(ValueError, match=r"spec\.dataset\.uri"):
        build_eval_validation_job(make_ev(dataset={"uri": "pvc://Bad_Claim/x"}), MEMBER,
                                  SETTINGS, "team")  # fmt: skip


# --- The FineTuneJob deployment gate ---------------------------------------------------------


def gated(baseline: str = "Current", metrics: list[dict[str, Any]] | None = None) -> FineTuneJob:
    gate = {"dataset": {"uri": "s3://data/held-out.jsonl"}, "baseline": baseline,
            "metrics": metrics or [{"name": "exactMatch", "min": 0.8}]}  # fmt: skip
    return make_job({
        "baseModel": {"modelDeploymentRef": {"name": "chat"}},
        "autoDeploy": {"modelDeploymentRef": {"name": "chat"}, "adapterName": "support",
                       "evaluation": gate},
    })  # fmt: skip


@pytest.mark.parametrize(
    ("baseline", "served", "expected"),
    [
        ("Current", [{"name": "support", "uri": "s3://a/v1"}],
         {"modelDeploymentRef": {"name": "chat"}, "adapter": "support"}),
        ("Current", [], {"modelDeploymentRef": {"name": "chat"}}),
        ("BaseModel", [{"name": "support", "uri": "s3://a/v1"}],
         {"modelDeploymentRef": {"name": "chat"}}),
        ("None", [], None),
    ],
)  # fmt: skip
def test_the_gate_evaluation(
    baseline: str, served: list[dict[str, Any]], expected: dict[str, Any] | None
) -> None:
    job = gated(baseline)
    obj = gate_evaluation(job, make_md(adapters=served or None))
    ev = Evaluation.model_validate(obj)  # a valid Evaluation
    assert ev.metadata.name == "tune-gate" == gate_name(job)
    assert obj["spec"].get("baseline") == expected
    assert obj["spec"]["target"] == {"modelDeploymentRef": {"name": "chat"},
                                     "fineTuneJobRef": {"name": "tune"}}  # fmt: skip
    assert obj["metadata"]["labels"][GATE_OF_LABEL] == "tune"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_the_gate_decides_the_deploy() -> None:
    job = gated()
    done = {"validation": ValidationResult(ok=True, lines=1),
            "rayjob": {"spec": {"backoffLimit": 3}, "status": {"jobDeploymentStatus": "Complete",
                                                               "jobStatus": "SUCCEEDED"}}}  # fmt: skip
    d = decide_job(job, JobObserved(**done, gate=GateOutcome("tune-gate")), T0)  # type: ignore[arg-type]
    assert d.phase == "Succeeded" and d.actions == ("gate_evaluation",)
    deployed = next(c for c in d.status.conditions or [] if c.type == DEPLOYED)
    assert (deployed.status, deployed.reason) == ("Unknown", "Evaluating")
    job = job.model_copy(update={"status": d.status})
    d = decide_job(job, JobObserved(gate=GateOutcome("tune-gate", "Running")), T1)
    assert d.actions == ()
    failed = GateOutcome("tune-gate", "Failed", "exactMatch 0.5 misses >= 0.8")
    d = decide_job(job, JobObserved(gate=failed), T1)
    deployed = next(c for c in d.status.conditions or [] if c.type == DEPLOYED)
    assert (deployed.status, deployed.reason) == ("False", "EvaluationFailed") and d.actions == ()
    assert "exactMatch 0.5 misses >= 0.8" in deployed.message
    assert "s3://out/job/adapter, not served" in deployed.message
    # A gate run again that passes deploys after all.
    job = job.model_copy(update={"status": d.status})
    d = decide_job(job, JobObserved(gate=GateOutcome("tune-gate", "Passed")), T1)
    assert d.actions == ("auto_deploy",)


def test_gate_outcome_reads_the_current_run_of_its_own_evaluation() -> None:
    job = gated()
    ev = Evaluation.model_validate(gate_evaluation(job, None))
    assert gate_outcome(job, None) == GateOutcome("tune-gate")
    assert gate_outcome(job, ev).phase == "Pending"  # no status yet
    ev = ev.model_copy(update={"metadata": ev.metadata.model_copy(update={"generation": 1})})
    passed = ev.model_copy(update={"status": EvaluationStatus(phase="Passed", observed_generation=1,
                                                              message="every threshold met")})  # fmt: skip
    assert gate_outcome(job, passed) == GateOutcome("tune-gate", "Passed", "every threshold met")
    stale = passed.model_copy(
        update={"metadata": passed.metadata.model_copy(update={"generation": 2})}
    )
    assert gate_outcome(job, stale).phase == "Pending"  # a new run of it is not judged yet
    foreign = passed.model_copy(
        update={"metadata": passed.metadata.model_copy(update={"labels": {}})}
    )
    assert gate_outcome(job, foreign).phase == "Error"


def test_only_evaluations_queued_by_the_quota_wait_in_the_tenants_queue() -> None:
    def queued(name: str, position: int | None, phase: str = "Queued") -> Evaluation:
        status = EvaluationStatus(phase=phase, queue_position=position)  # type: ignore[arg-type]
        return make_ev(name=name).model_copy(update={"status": status})

    evs = [queued("a", 1), queued("b", None), queued("c", None, "Running"), make_ev(name="d")]
    got = queued_workloads(evs, [make_md()], holding=[])
    assert [(w.key, dict(w.gpus)) for w in got] == [("Evaluation/team-a/a", {"H100": 2})]
    assert queued_workloads(evs, [make_md()], holding=["Evaluation/team-a/a"]) == []
