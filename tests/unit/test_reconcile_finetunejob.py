"""The FineTuneJob phase machine, table-driven: (spec, observed) -> phase, conditions, actions;
plus progress, transition times, terminal phases, placement and auto-deploy rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.unit.test_builders_rayjob import make_job

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment
from tramontane_api.v1alpha1.finetunejob import Estimate
from tramontane_operator.placement import ClusterView
from tramontane_operator.reconcile.finetunejob import (
    ADMITTED,
    COMPLETE,
    DEPLOYED,
    FAILED,
    RUNNING,
    SUSPENDED,
    VALIDATED,
    Decision,
    Observed,
    decide,
    holds_quota,
)
from tramontane_operator.reconcile.finetunejob_deploy import (
    ADAPTER_DEPLOYED,
    ADAPTER_NAME_CONFLICT,
    BASE_MODEL_MISMATCH,
    MODEL_DEPLOYMENT_NOT_FOUND,
    DeployOutcome,
    adapters_with,
)
from tramontane_operator.reconcile.finetunejob_inputs import (
    AdmissionResult,
    JobPlacement,
    ValidationResult,
    place_job,
)
from tramontane_workers.contract.estimate import ModelSizeRead
from tramontane_workers.contract.train_config import CheckpointRecord, TrainProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
VALID = ValidationResult(ok=True, lines=12)
INVALID = ValidationResult(
    ok=False,
    errors=("s3://data/train.jsonl:3: messages[1].role: unknown role 'robot'",
            "s3://data/train.jsonl:7: the last message must be from the assistant"),
    bad_lines=2, lines=12,
)  # fmt: skip
ADMIT = AdmissionResult(admitted=True)
QUEUED = AdmissionResult(False, 2, "quota gpus.H100: needs 2, 8 of 8 in use")
PLACED = JobPlacement("aks", "placed in aks")
UNPLACED = JobPlacement(None, "no eligible cluster (aks: unreachable)")
AUTO = {
    "autoDeploy": {"modelDeploymentRef": {"name": "chat"}, "adapterName": "support"},
    "baseModel": {"modelDeploymentRef": {"name": "chat"}},
}


def rayjob(deployment: str, job: str = "", suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "spec": {"suspend": suspend, "backoffLimit": 3},  # as rendered from make_job()
        "status": {"jobDeploymentStatus": deployment, "jobStatus": job, **status},
    }


def progress(step: int = 40, state: str = "running", **kw: Any) -> TrainProgress:
    values: dict[str, Any] = {
        "state": state, "step": step, "total_steps": 100, "percent": step,
        "train_loss": 1.5, "valid_loss": 1.7, "tokens_per_second": 900.0, "updated": T0,
    }  # fmt: skip
    values.update(kw)
    return TrainProgress.model_validate(values)


def cond(decision: Decision, type_: str) -> tuple[str, str]:
    for c in decision.status.conditions or []:
        if c.type == type_:
            return c.status, c.reason
    raise AssertionError(f"no condition {type_}")


def with_status(job: FineTuneJob, decision: Decision) -> FineTuneJob:
    return job.model_copy(update={"status": decision.status})


CASES: list[tuple[str, dict[str, Any], Observed, str, tuple[str, ...], dict[str, tuple[str, str]]]]
CASES = [
    ("fresh job validates first", {}, Observed(), "Validating", ("validate",),
     {VALIDATED: ("Unknown", "Validating")}),
    ("bad lines end it", {}, Observed(validation=INVALID, admission=ADMIT, placement=PLACED),
     "FailedValidation", (), {VALIDATED: ("False", "InvalidDataset"),
                              FAILED: ("True", "InvalidDataset")}),
    ("dry run stops with the estimate", {"dryRun": True}, Observed(validation=VALID),
     "Succeeded", (), {COMPLETE: ("True", "DryRun"), RUNNING: ("False", "NotStarted")}),
    ("base model missing waits", {}, Observed(validation=VALID, base_model_error="md gone",
     admission=ADMIT, placement=PLACED), "Pending", (), {ADMITTED: ("Unknown",
     "BaseModelNotFound")}),
    ("suspended before start", {"suspend": True}, Observed(validation=VALID, admission=ADMIT,
     placement=PLACED), "Suspended", (), {SUSPENDED: ("True", "SuspendedByUser")}),
    ("over quota queues", {}, Observed(validation=VALID, admission=QUEUED, placement=PLACED),
     "Queued", (), {ADMITTED: ("False", "QuotaExceeded")}),
    ("no cluster queues", {}, Observed(validation=VALID, admission=ADMIT, placement=UNPLACED),
     "Queued", (), {ADMITTED: ("False", "NoEligibleCluster")}),
    ("admitted and placed creates", {}, Observed(validation=VALID, admission=ADMIT,
     placement=PLACED), "Running", ("create_rayjob",), {RUNNING: ("True", "Starting"),
     ADMITTED: ("True", "QuotaAvailable")}),
    ("ray cluster starting", {}, Observed(validation=VALID, rayjob=rayjob("Initializing")),
     "Running", (), {RUNNING: ("True", "Starting")}),
    ("training", {}, Observed(validation=VALID, rayjob=rayjob("Running", "RUNNING"),
     progress=progress()), "Running", (), {RUNNING: ("True", "Training")}),
    ("retrying", {}, Observed(validation=VALID, rayjob=rayjob("Retrying", failed=1)),
     "Running", (), {RUNNING: ("True", "Retrying")}),
    ("succeeded", {}, Observed(validation=VALID, rayjob=rayjob("Complete", "SUCCEEDED"),
     progress=progress(100, "succeeded")), "Succeeded", (), {COMPLETE: ("True",
     "TrainingSucceeded"), RUNNING: ("False", "Finished")}),
    ("succeeded with auto-deploy deploys", AUTO, Observed(validation=VALID,
     rayjob=rayjob("Complete", "SUCCEEDED")), "Succeeded", ("auto_deploy",),
     {DEPLOYED: ("Unknown", "Pending")}),
    ("auto-deploy done", AUTO, Observed(validation=VALID, rayjob=rayjob("Complete", "SUCCEEDED"),
     deploy=DeployOutcome(True, ADAPTER_DEPLOYED, "added")), "Succeeded", (),
     {DEPLOYED: ("True", ADAPTER_DEPLOYED)}),
    ("app failed", {}, Observed(validation=VALID, rayjob=rayjob("Failed", "FAILED",
     reason="AppFailed")), "Failed", (), {FAILED: ("True", "TrainingFailed")}),
    ("deadline", {}, Observed(validation=VALID, rayjob=rayjob("Failed", "STOPPED",
     reason="DeadlineExceeded")), "Failed", (), {FAILED: ("True", "DeadlineExceeded")}),
    ("stopped job is a failure", {}, Observed(validation=VALID, rayjob=rayjob("Complete",
     "STOPPED")), "Failed", (), {FAILED: ("True", "TrainingFailed")}),
    ("suspend a running job", {"suspend": True}, Observed(validation=VALID,
     rayjob=rayjob("Running", "RUNNING")), "Suspended", ("suspend_rayjob",),
     {SUSPENDED: ("True", "Suspending"), ADMITTED: ("False", "SuspendedByUser")}),
    ("suspended rayjob", {"suspend": True}, Observed(validation=VALID,
     rayjob=rayjob("Suspended", suspend=True)), "Suspended", (),
     {SUSPENDED: ("True", "SuspendedByUser")}),
    ("resume when admitted", {}, Observed(validation=VALID, admission=ADMIT,
     rayjob=rayjob("Suspended", suspend=True)), "Running", ("resume_rayjob",),
     {RUNNING: ("True", "Resuming"), SUSPENDED: ("False", "NotSuspended")}),
    ("resume waits for quota", {}, Observed(validation=VALID, admission=QUEUED,
     rayjob=rayjob("Suspended", suspend=True)), "Queued", (),
     {ADMITTED: ("False", "QuotaExceeded")}),
    ("deleting cancels", {}, Observed(validation=VALID, rayjob=rayjob("Running"),
     deleting=True), "Cancelled", ("delete_rayjob",), {FAILED: ("True", "Cancelled")}),
    ("job controls patched", {"activeDeadlineSeconds": 60, "backoffLimit": 1},
     Observed(validation=VALID, rayjob=rayjob("Running", "RUNNING")), "Running",
     ("patch_rayjob_controls",), {RUNNING: ("True", "Training")}),
    ("job controls of a finished rayjob stay", {"backoffLimit": 1}, Observed(validation=VALID,
     rayjob=rayjob("Complete", "SUCCEEDED")), "Succeeded", (), {}),
    ("resumed with another spec replaces", {}, Observed(validation=VALID, admission=ADMIT,
     rayjob=rayjob("Suspended", suspend=True), spec_hash="new", rendered_hash="old"),
     "Queued", ("replace_rayjob",), {ADMITTED: ("False", "SpecChanged"),
     RUNNING: ("False", "SpecChanged")}),
    ("suspended with another spec waits", {"suspend": True}, Observed(validation=VALID,
     rayjob=rayjob("Suspended", suspend=True), spec_hash="new", rendered_hash="old"),
     "Suspended", (), {SUSPENDED: ("True", "SuspendedByUser")}),
    ("same spec resumes", {}, Observed(validation=VALID, admission=ADMIT,
     rayjob=rayjob("Suspended", suspend=True), spec_hash="same", rendered_hash="same"),
     "Running", ("resume_rayjob",), {RUNNING: ("True", "Resuming")}),
    ("unknown rendering is kept", {}, Observed(validation=VALID, admission=ADMIT,
     rayjob=rayjob("Suspended", suspend=True), spec_hash="new"), "Running",
     ("resume_rayjob",), {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "observed", "phase", "actions", "conditions"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_phase_machine(
    spec: dict[str, Any],
    observed: Observed,
    phase: str,
    actions: tuple[str, ...],
    conditions: dict[str, tuple[str, str]],
) -> None:
    decision = decide(make_job(spec), observed, T0)
    assert decision.phase == phase
    assert decision.actions == actions
    for type_, expected in conditions.items():
        assert cond(decision, type_) == expected, type_
    assert decision.status.observed_generation == 1


def test_failed_validation_message_names_the_lines_and_never_creates() -> None:
    job = make_job()
    decision = decide(job, Observed(validation=INVALID, admission=ADMIT, placement=PLACED), T0)
    (validated,) = [c for c in decision.status.conditions or [] if c.type == VALIDATED]
    assert "train.jsonl:3: messages[1].role" in validated.message
    assert "train.jsonl:7:" in validated.message and validated.message.startswith("2 bad lines")
    # Terminal: nothing observed later (not even an admission) creates a RayJob.
    later = decide(with_status(job, decision), Observed(admission=ADMIT, placement=PLACED), T1)
    assert later.phase == "FailedValidation" and later.actions == ()
    assert later.status == decision.status


def test_replacing_forgets_the_cluster_unless_claims_pin_it() -> None:
    job = make_job()
    running = decide(job, Observed(validation=VALID, admission=ADMIT, placement=PLACED), T0)
    assert running.status.cluster == "aks"
    resumed = with_status(job, running)
    stale = {"spec_hash": "new", "rendered_hash": "old", "admission": ADMIT}
    free = decide(resumed, Observed(rayjob=rayjob("Suspended", suspend=True), **stale), T1)
    assert free.actions == ("replace_rayjob",)
    assert free.status.cluster is None and free.status.ray_job is None
    assert not holds_quota(free.status)  # admitted again, for the new resources
    pinned = decide(
        resumed, Observed(rayjob=rayjob("Suspended", suspend=True), pinned=True, **stale), T1
    )
    assert pinned.actions == ("replace_rayjob",) and pinned.status.cluster == "aks"
    # Once the old RayJob is gone: created anew (here: placed again in aks).
    again = decide(with_status(job, free), Observed(admission=ADMIT, placement=PLACED), T1)
    assert again.actions == ("create_rayjob",) and again.status.cluster == "aks"


def test_a_dry_run_turned_off_proceeds_to_train() -> None:
    estimate = Estimate(dataset_tokens=1000, train_tokens=4000, steps=100, epochs=4.0)
    result = ValidationResult(True, lines=5, estimate=estimate)
    dry = decide(make_job({"dryRun": True}), Observed(validation=result), T0)
    assert dry.phase == "Succeeded" and dry.status.completion_time == T0
    still = decide(with_status(make_job({"dryRun": True}), dry), Observed(placement=PLACED), T1)
    assert still.phase == "Succeeded" and still.actions == ()
    real = decide(with_status(make_job(), dry), Observed(admission=ADMIT, placement=PLACED), T1)
    assert real.phase == "Running" and real.actions == ("create_rayjob",)
    assert real.status.completion_time is None and real.status.estimate == estimate
    assert cond(real, COMPLETE) == ("False", "NotComplete")


def test_queue_position_and_reason() -> None:
    decision = decide(make_job(), Observed(validation=VALID, admission=QUEUED), T0)
    assert decision.status.queue_position == 2
    (admitted,) = [c for c in decision.status.conditions or [] if c.type == ADMITTED]
    assert "quota gpus.H100" in admitted.message
    running = decide(make_job(), Observed(validation=VALID, rayjob=rayjob("Running")), T0)
    assert running.status.queue_position is None


def test_validation_is_remembered_and_the_estimate_kept() -> None:
    estimate = Estimate(dataset_tokens=1000, train_tokens=4000, steps=100, epochs=4.0)
    job = make_job()
    first = decide(job, Observed(validation=ValidationResult(True, lines=5, estimate=estimate),
                                 admission=QUEUED), T0)  # fmt: skip
    second = decide(with_status(job, first), Observed(admission=ADMIT, placement=PLACED), T1)
    assert second.actions == ("create_rayjob",)  # no second validation
    assert second.status.estimate == estimate
    assert second.status.cluster == "aks" and second.status.ray_job == "tune"
    assert second.status.start_time == T1


def test_progress_checkpoints_and_retries_reach_the_status() -> None:
    ckpts = [CheckpointRecord(step=s, uri=f"s3://out/job/checkpoints/{s}", time=T0)
             for s in range(10, 80, 10)]  # fmt: skip
    observed = Observed(
        validation=VALID,
        rayjob=rayjob("Running", "RUNNING", failed=1),
        progress=progress(70, checkpoints=ckpts, attempt=2, eta=T1),
    )
    status = decide(make_job(), observed, T0).status
    assert status.progress is not None
    assert (status.progress.step, status.progress.total_steps, status.progress.percent) == (
        70, 100, 70.0)  # fmt: skip
    assert status.progress.train_loss == 1.5 and status.progress.eta == T1
    assert [c.step for c in status.checkpoints or []] == [30, 40, 50, 60, 70]
    assert status.retries == 1


def test_transition_times_move_only_with_status() -> None:
    job = make_job()
    first = decide(job, Observed(validation=VALID, rayjob=rayjob("Initializing")), T0)
    second = decide(with_status(job, first), Observed(rayjob=rayjob("Running", "RUNNING")), T1)
    times = {c.type: c.last_transition_time for c in second.status.conditions or []}
    reasons = {c.type: c.reason for c in second.status.conditions or []}
    assert reasons[RUNNING] == "Training" and times[RUNNING] == T0  # True -> True, reason only
    done = decide(with_status(job, second), Observed(rayjob=rayjob("Complete", "SUCCEEDED")), T1)
    times = {c.type: c.last_transition_time for c in done.status.conditions or []}
    assert times[COMPLETE] == T1 and times[RUNNING] == T1 and times[VALIDATED] == T0


def test_succeeded_links_the_adapter() -> None:
    job = make_job(AUTO)
    observed = Observed(validation=VALID, rayjob=rayjob("Complete", "SUCCEEDED"))
    adapter = decide(job, observed, T0).status.adapter
    assert adapter is not None and adapter.uri == "s3://out/job/adapter"
    assert (adapter.model_deployment, adapter.adapter_name) == ("chat", "support")
    written = progress(100, "succeeded", adapter_uri="s3://elsewhere/adapter")
    later = decide(job, Observed(validation=VALID, rayjob=observed.rayjob, progress=written), T0)
    assert later.status.adapter is not None and later.status.adapter.uri == "s3://elsewhere/adapter"


def test_terminal_success_retries_only_the_auto_deploy() -> None:
    job = make_job(AUTO)
    done = decide(job, Observed(validation=VALID, rayjob=rayjob("Complete", "SUCCEEDED")), T0)
    job = with_status(job, done)
    # The RayJob is gone (TTL): the job stays Succeeded and still wants its deploy.
    again = decide(job, Observed(), T1)
    assert again.phase == "Succeeded" and again.actions == ("auto_deploy",)
    refused = DeployOutcome(False, BASE_MODEL_MISMATCH, "serves another model")
    failed_deploy = decide(job, Observed(deploy=refused), T1)
    assert cond(failed_deploy, DEPLOYED) == ("False", BASE_MODEL_MISMATCH)
    assert cond(failed_deploy, COMPLETE) == ("True", "TrainingSucceeded")
    ok = decide(job, Observed(deploy=DeployOutcome(True, ADAPTER_DEPLOYED, "added")), T1)
    assert decide(with_status(job, ok), Observed(), T1).actions == ()


@pytest.mark.parametrize(
    ("phase_spec", "observed", "holds"),
    [
        ({}, Observed(validation=VALID, admission=ADMIT, placement=PLACED), True),
        ({}, Observed(validation=VALID, admission=QUEUED), False),
        ({"suspend": True}, Observed(validation=VALID, rayjob=rayjob("Running")), False),
        ({}, Observed(validation=VALID, rayjob=rayjob("Complete", "SUCCEEDED")), False),
    ],
)
def test_quota_is_held_only_while_admitted_and_active(
    phase_spec: dict[str, Any], observed: Observed, holds: bool
) -> None:
    assert holds_quota(decide(make_job(phase_spec), observed, T0).status) is holds


def test_cancelled_without_rayjob_has_nothing_to_delete() -> None:
    decision = decide(make_job(), Observed(validation=VALID, deleting=True), T0)
    assert decision.phase == "Cancelled" and decision.actions == ()


def test_deleting_a_finished_job_keeps_its_phase() -> None:
    job = make_job()
    done = decide(job, Observed(validation=VALID, rayjob=rayjob("Complete", "SUCCEEDED")), T0)
    later = decide(with_status(job, done), Observed(rayjob=rayjob("Complete"), deleting=True), T1)
    assert later.phase == "Succeeded" and later.actions == ()


# Placement of a job.
def view(name: str, **kw: Any) -> ClusterView:
    return ClusterView(name, gpus_capacity=kw.pop("gpus", {"H100": 8}), **kw)


def test_place_job_prefers_named_order_and_skips_ineligible() -> None:
    job = make_job({"placement": {"clusters": ["b", "a"]}})
    clusters = [view("a"), view("b", reachable=False), view("c")]
    assert place_job(job, clusters).cluster == "a"
    none = place_job(job, [view("a", cordoned=True), view("b", kuberay_installed=False)])
    assert none.cluster is None
    assert "a: cordoned" in none.message and "b: KubeRay not installed" in none.message


def test_place_job_needs_free_gpus_and_sticks_to_its_cluster() -> None:
    job = make_job()  # 2 x H100
    full = view("full", gpus_allocated={"H100": 7})
    roomy = view("roomy", gpus={"H100": 4})
    assert place_job(job, [full, roomy]).cluster == "roomy"
    assert "1 free H100 of 2 needed" in place_job(job, [full]).message
    assert place_job(job, [full, roomy], current="full").cluster == "full"  # never moves
    selected = make_job({"placement": {"clusterSelector": {"matchLabels": {"tier": "x"}}}})
    assert place_job(selected, [roomy, view("x", labels={"tier": "x"})]).cluster == "x"
    assert place_job(selected, [roomy]).cluster is None


# Auto-deploy.
def model_deployment(source: str = "hf://x/base", adapters: list[Any] | None = None) -> Any:
    spec: dict[str, Any] = {"model": {"name": "chat", "source": source}}
    if adapters is not None:
        spec["adapters"] = adapters
    return ModelDeployment.model_validate(
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "chat", "namespace": "team-a"}, "spec": spec}
    )  # fmt: skip


def test_adapter_added_to_the_model_deployment() -> None:
    job = make_job(AUTO)
    other = {"name": "older", "uri": "s3://a/older"}
    adapters, outcome = adapters_with(job, model_deployment(adapters=[other]), "s3://out/adapter")
    assert outcome.deployed and adapters == [other, {"name": "support", "uri": "s3://out/adapter"}]
    again, outcome = adapters_with(job, model_deployment(adapters=adapters), "s3://out/adapter")
    assert again is None and outcome.deployed  # idempotent


def test_adapter_with_a_rollout_gets_the_output_as_its_new_version() -> None:
    rollout = {"steps": [{"weight": 10, "holdSeconds": 60}]}
    served = {"name": "support", "fineTuneJobRef": {"name": "older-job"}, "rollout": rollout}
    other = {"name": "older", "uri": "s3://a/older"}
    md = model_deployment(adapters=[other, served])
    adapters, outcome = adapters_with(make_job(AUTO), md, "s3://out/adapter")
    assert outcome.deployed and outcome.reason == ADAPTER_DEPLOYED
    assert adapters is not None and adapters[0] == other
    assert adapters[1]["uri"] == "s3://out/adapter" and "fineTuneJobRef" not in adapters[1]
    assert adapters[1]["rollout"]["steps"] == [{"weight": 10, "holdSeconds": 60}]
    again, outcome = adapters_with(make_job(AUTO), model_deployment(adapters=adapters),
                                   "s3://out/adapter")  # fmt: skip
    assert again is None and outcome.deployed  # idempotent


@pytest.mark.parametrize(
    ("spec", "md", "reason"),
    [
        (AUTO, None, MODEL_DEPLOYMENT_NOT_FOUND),
        ({**AUTO, "baseModel": {"uri": "hf://x/other"}}, model_deployment(), BASE_MODEL_MISMATCH),
        (AUTO, model_deployment(adapters=[{"name": "support", "uri": "s3://x"}]),
         ADAPTER_NAME_CONFLICT),
    ],
)  # fmt: skip
def test_auto_deploy_refusals_are_clear(spec: dict[str, Any], md: Any, reason: str) -> None:
    adapters, outcome = adapters_with(make_job(spec), md, "s3://out/adapter")
    assert adapters is None and not outcome.deployed and outcome.reason == reason
    assert outcome.message


# Validation result and estimate.
def summary(source: str, **kw: Any) -> Any:
    from tramontane_workers.contract.datasets import DatasetSummary, LineError

    errors = [LineError(line=n, path=p, message=m) for n, p, m in kw.pop("errors", [])]
    return DatasetSummary(source=source, errors=errors, **kw)


def test_validation_result_lists_bad_lines_of_every_file() -> None:
    from tramontane_operator.reconcile.finetunejob_estimate import validation_result

    train = summary("s3://d/t.jsonl", lines=5, conversations=4, tokens=80, bad_lines=1,
                    errors=[(3, "messages[0].role", "unknown role 'robot'")])  # fmt: skip
    valid = summary("s3://d/v.jsonl", lines=2, conversations=1, tokens=20, bad_lines=1,
                    errors=[(2, "", "not JSON")])  # fmt: skip
    result = validation_result(make_job(), [train], [valid], None)
    assert not result.ok and result.estimate is None and result.bad_lines == 2
    assert result.errors == (
        "s3://d/t.jsonl:3: messages[0].role: unknown role 'robot'",
        "s3://d/v.jsonl:2: not JSON",
    )
    empty = validation_result(make_job(), [summary("s3://data/train.jsonl", lines=1)], [], None)
    assert not empty.ok and empty.message() == "s3://data/train.jsonl: no conversation"


def test_estimate_uses_the_job_gpu_and_the_cheapest_cluster_price() -> None:
    from tramontane_api.v1alpha1 import ComputeCluster
    from tramontane_operator.reconcile.finetunejob_estimate import validation_result

    def cluster(name: str, price: float) -> ComputeCluster:
        return ComputeCluster.model_validate(
            {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ComputeCluster",
             "metadata": {"name": name},
             "spec": {"connection": {"inCluster": True}, "gpus": {"H100": 8}, "cloud": "azure",
                      "region": "westeurope",
                      "pricing": {"currency": "EUR", "gpuHour": {"H100": price}}}}
        )  # fmt: skip

    train = summary("s3://d/t.jsonl", lines=4000, conversations=4000, tokens=4_000_000)
    size = ModelSizeRead("s3://models/m", params=7e9)
    result = validation_result(
        make_job(), [train], [], size, [cluster("a", 4.0), cluster("b", 2.5)]
    )
    assert result.ok and result.estimate is not None
    estimate = result.estimate
    assert estimate.steps == 100 and estimate.dataset_tokens == 4_000_000
    assert (estimate.model_params, estimate.model_params_source) == (7_000_000_000, "Read")
    assert estimate.assumptions is None and "assum" not in result.message()
    (h100,) = estimate.per_gpu_type or []
    assert h100.gpu_type == "H100" and h100.currency == "EUR"
    assert h100.cost == round(h100.gpu_hours * 2.5, 2) and h100.cost > 0


# Admission against the tenant's quota.
def tenant(**quotas: Any) -> Any:
    from tramontane_api.v1alpha1 import Tenant

    return Tenant.model_validate(
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
         "spec": {"namespaces": ["team-a"], "quotas": quotas}}
    )  # fmt: skip


def named(name: str, created: str, status: Decision | None = None, **spec: Any) -> FineTuneJob:
    job = make_job(spec)
    meta = job.metadata.model_copy(update={"name": name, "uid": name})
    meta.__pydantic_extra__ = {"creationTimestamp": created}
    return job.model_copy(update={"metadata": meta, "status": status.status if status else None})


def test_admission_by_priority_then_age_within_the_quota() -> None:
    from tramontane_operator.reconcile.admission import admission_for, job_workload

    validated = decide(make_job(), Observed(validation=VALID, admission=QUEUED), T0)
    running = decide(make_job(), Observed(validation=VALID, rayjob=rayjob("Running")), T0)
    quota = tenant(gpus={"H100": 4})  # each job: 2 workers x 1 H100
    old = job_workload(named("old", "2026-01-01T00:00:00Z", validated))
    new = job_workload(named("new", "2026-01-02T00:00:00Z", validated))
    urgent = job_workload(named("urgent", "2026-01-03T00:00:00Z", validated, priority=10))
    holder = job_workload(named("holder", "2025-12-31T00:00:00Z", running))
    assert holder.admitted and not old.admitted
    held, waiting = [holder], [old, new, urgent]
    assert admission_for(urgent, quota, held, waiting).admitted  # priority first
    assert not admission_for(old, quota, held, waiting).admitted  # urgent + holder fill it
    queued = admission_for(new, quota, held, waiting)
    assert (queued.admitted, queued.queue_position) == (False, 2)
    assert "quota gpus.H100" in queued.reason
    assert admission_for(holder, quota, held, waiting).admitted  # what runs keeps running
    assert admission_for(new, None, held, waiting).admitted  # no tenant: no quota
    one_job = tenant(maxConcurrentFineTuneJobs=1)
    assert not admission_for(old, one_job, held, [old]).admitted


def test_valid_datasets_say_how_many_conversations_will_be_cut() -> None:
    from tramontane_operator.reconcile.finetunejob_estimate import report_result
    from tramontane_workers.contract.datasets_report import DatasetsReport

    job = make_job()
    report = DatasetsReport(ok=True, lines=10, conversations=10, tokens=5000, truncated=3)
    result = report_result(job, report, ModelSizeRead("s3://models/m", params=7e9))
    assert result.ok and result.truncated == 3
    seq = job.spec.hyperparameters.sequence_length
    assert result.message() == (
        f"10 lines valid; 3 conversation(s) longer than sequenceLength {seq} tokens will be cut"
    )
    no_cut = report.model_copy(update={"truncated": 0})
    assert report_result(job, no_cut, ModelSizeRead("s3://m", params=7e9)).message() == (
        "10 lines valid"
    )


@pytest.mark.parametrize(
    ("size", "why"),
    [
        (
            ModelSizeRead("hf://mistralai/Mistral-7B-v0.3", error="the operator does not fetch"),
            "could not read hf://mistralai/Mistral-7B-v0.3: the operator does not fetch",
        ),
        (None, "no base model URI"),
    ],
)
def test_an_unknown_model_size_is_assumed_out_loud(size: ModelSizeRead | None, why: str) -> None:
    from tramontane_operator.reconcile.finetunejob_estimate import report_result
    from tramontane_workers.contract.datasets_report import DatasetsReport

    report = DatasetsReport(ok=True, lines=10, conversations=10, tokens=5000)
    result = report_result(make_job(), report, size)
    assert result.ok and result.estimate is not None
    estimate = result.estimate
    assert estimate.model_params == 7_248_023_552 and estimate.model_params_source == "Assumed"
    assumption = f"base model size unknown ({why}); assumed 7.2B parameters (Mistral 7B v0.3)"
    assert estimate.assumptions == [assumption]
    assert result.message() == f"10 lines valid; estimate: {assumption}"
    decision = decide(make_job({"dryRun": True}), Observed(validation=result), T0)
    validated = next(c for c in decision.status.conditions or [] if c.type == VALIDATED)
    assert validated.status == "True" and "assumed 7.2B parameters" in validated.message
    assert decision.status.estimate == estimate
    wire = estimate.model_dump(by_alias=True, exclude_none=True)
    assert wire["modelParamsSource"] == "Assumed" and wire["assumptions"] == [assumption]
