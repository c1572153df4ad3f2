"""The FineTuneJob phase machine: (spec, what was observed) -> status and the actions to take.

Pure. Phases: Pending -> Validating -> Queued -> Running -> Succeeded | Failed |
FailedValidation | Cancelled, and Suspended (from Queued or Running, back when resumed).

- No validation result yet: Validating; action `validate` (with the cluster validating the
  datasets that are not local files, which the job then runs in). Invalid data:
  FailedValidation with the first bad lines in the `Validated` condition, and never a
  RayJob; `file://` URIs outside local mode likewise, with reason `LocalPathRefused`
  (`finetunejob_trust`).
- `dryRun`: Succeeded with `status.estimate` once the data is valid; nothing is started.
- The base model's ModelDeployment missing: Pending until it appears.
- Suspended by the user, quota not available, or no eligible cluster: Suspended / Queued
  (no RayJob while the job holds no quota; a suspended RayJob is kept to resume).
- Admitted and placed: action `create_rayjob`, then the RayJob's status drives the phase;
  `spec.suspend` toggles are actions `suspend_rayjob` / `resume_rayjob`; changed
  `activeDeadlineSeconds` / `backoffLimit` are `patch_rayjob_controls`. Resumed with another
  spec than the RayJob was rendered from (hyperparameters, resources: changed while
  suspended): `replace_rayjob` and Queued, the cluster forgotten unless claims pin the job
  there, so quota and placement are decided again for the new resources.
- A finished dry run whose `dryRun` is turned off is reopened and proceeds to train.
- Succeeded with `autoDeploy`: action `auto_deploy` until the `Deployed` condition is True;
  with a deployment gate (`autoDeploy.evaluation`) only once its Evaluation passed (action
  `gate_evaluation` creates it); a failed one is `Deployed=False`, reason `EvaluationFailed`.
- Terminal phases stay (deletion included); deleting an unfinished job is Cancelled, with
  `delete_rayjob` when its RayJob exists.

`lastTransitionTime` of a condition moves only when its status does (`merge_conditions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from tramontane_api.v1alpha1 import FineTuneJob, FineTuneJobStatus
from tramontane_api.v1alpha1.finetunejob import (
    AdapterStatus,
    Checkpoint,
    FineTuneJobPhase,
    Progress,
)
from tramontane_workers.contract.train_config import ADAPTER_DIR, TrainProgress

from .conditions import ConditionSpec, find, merge_conditions
from .finetunejob_deploy import EVALUATING, EVALUATION_FAILED, DeployOutcome, GateOutcome
from .finetunejob_inputs import (
    DEPLOYMENT_RETRYING,
    DEPLOYMENT_RUNNING,
    REASON_DEADLINE_EXCEEDED,
    AdmissionResult,
    JobPlacement,
    RayJobState,
    ValidationResult,
)
from .finetunejob_trust import LOCAL_PATH_REFUSED

# Condition types.
VALIDATED: Final = "Validated"
ADMITTED: Final = "Admitted"
RUNNING: Final = "Running"
SUSPENDED: Final = "Suspended"
COMPLETE: Final = "Complete"
FAILED: Final = "Failed"
DEPLOYED: Final = "Deployed"
TERMINAL: Final = frozenset({"Succeeded", "Failed", "FailedValidation", "Cancelled"})
KEPT_CHECKPOINTS: Final = 5

Action = Literal[
    "validate",
    "create_rayjob",
    "suspend_rayjob",
    "resume_rayjob",
    "patch_rayjob_controls",
    "replace_rayjob",
    "delete_rayjob",
    "auto_deploy",
    "gate_evaluation",
]


class FtjReason:
    """Every FineTuneJob condition reason."""

    VALIDATING: Final = "Validating"
    DATASET_VALID: Final = "DatasetValid"
    INVALID_DATASET: Final = "InvalidDataset"
    LOCAL_PATH_REFUSED: Final = LOCAL_PATH_REFUSED  # file:// outside local mode (trust model)
    NOT_EVALUATED: Final = "NotEvaluated"
    BASE_MODEL_NOT_FOUND: Final = "BaseModelNotFound"
    ADMITTED: Final = "QuotaAvailable"
    QUOTA_EXCEEDED: Final = "QuotaExceeded"
    NO_ELIGIBLE_CLUSTER: Final = "NoEligibleCluster"
    NOT_STARTED: Final = "NotStarted"
    STARTING: Final = "Starting"
    TRAINING: Final = "Training"
    RETRYING: Final = "Retrying"
    RESUMING: Final = "Resuming"
    FINISHED: Final = "Finished"
    NOT_SUSPENDED: Final = "NotSuspended"
    SUSPENDING: Final = "Suspending"
    SUSPENDED_BY_USER: Final = "SuspendedByUser"
    NOT_COMPLETE: Final = "NotComplete"
    TRAINING_SUCCEEDED: Final = "TrainingSucceeded"
    DRY_RUN: Final = "DryRun"
    NO_FAILURE: Final = "NoFailure"
    TRAINING_FAILED: Final = "TrainingFailed"
    DEADLINE_EXCEEDED: Final = REASON_DEADLINE_EXCEEDED
    CANCELLED: Final = "Cancelled"
    DEPLOY_PENDING: Final = "Pending"
    SPEC_CHANGED: Final = "SpecChanged"


@dataclass(frozen=True)
class Observed:
    """Everything the runtime observed or decided for one reconcile of one job."""

    validation: ValidationResult | None = None
    base_model_error: str | None = None
    admission: AdmissionResult | None = None
    placement: JobPlacement | None = None
    rayjob: Mapping[str, Any] | None = None
    progress: TrainProgress | None = None
    deploy: DeployOutcome | None = None
    gate: GateOutcome | None = None  # the deployment gate's Evaluation, once training succeeded
    deleting: bool = False
    validating: str | None = None  # how validation goes, while there is no result
    spec_hash: str | None = None  # of the spec a RayJob would be rendered from now
    rendered_hash: str | None = None  # of the spec the observed RayJob was rendered from
    pinned: bool = False  # the job stays in its cluster when its RayJob is replaced (claims)


@dataclass(frozen=True)
class Decision:
    status: FineTuneJobStatus
    actions: tuple[Action, ...] = ()

    @property
    def phase(self) -> FineTuneJobPhase | None:
        return self.status.phase


@dataclass
class _Draft:
    """The status being computed: phase, one spec per condition type, the fields."""

    phase: FineTuneJobPhase
    conditions: dict[str, ConditionSpec]
    fields: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)

    def set(
        self,
        type_: str,
        status: Literal["True", "False", "Unknown"],
        reason: str,
        message: str = "",
    ) -> None:
        self.conditions[type_] = ConditionSpec(type_, status, reason, message)


def was_validated(status: FineTuneJobStatus | None) -> bool:
    """Whether a previous reconcile found the datasets valid (training files are immutable)."""
    cond = find(status.conditions if status else None, VALIDATED)
    return cond is not None and cond.status == "True"


def dry_run_lifted(job: FineTuneJob) -> bool:
    """Whether a finished dry run was turned into a real run (`dryRun` set to false)."""
    status = job.status
    if status is None or status.phase != "Succeeded" or job.spec.dry_run:
        return False
    complete = find(status.conditions, COMPLETE)
    return complete is not None and complete.reason == FtjReason.DRY_RUN


def finished(job: FineTuneJob) -> bool:
    """Whether the job is in a terminal phase it stays in."""
    status = job.status
    return status is not None and status.phase in TERMINAL and not dry_run_lifted(job)


def holds_quota(status: FineTuneJobStatus | None) -> bool:
    """Whether the job holds its tenant's quota now (admitted and not finished/suspended)."""
    if status is None or status.phase in TERMINAL or status.phase == "Suspended":
        return False
    cond = find(status.conditions, ADMITTED)
    return cond is not None and cond.status == "True"


def progress_of(progress: TrainProgress) -> Progress:
    return Progress(
        step=progress.step,
        total_steps=progress.total_steps,
        percent=round(min(max(progress.percent, 0.0), 100.0), 2),
        train_loss=progress.train_loss,
        valid_loss=progress.valid_loss,
        tokens_per_second=progress.tokens_per_second,
        eta=progress.eta,
    )


def checkpoints_of(progress: TrainProgress) -> list[Checkpoint]:
    recent = sorted(progress.checkpoints, key=lambda c: c.step)[-KEPT_CHECKPOINTS:]
    return [Checkpoint(step=c.step, uri=c.uri, time=c.time) for c in recent]


def adapter_uri(job: FineTuneJob, progress: TrainProgress | None) -> str:
    if progress is not None and progress.adapter_uri:
        return progress.adapter_uri
    return f"{job.spec.output.uri.rstrip('/')}/{ADAPTER_DIR}"


def _initial(job: FineTuneJob, previous: FineTuneJobStatus) -> _Draft:
    draft = _Draft(phase="Pending", conditions={})
    draft.set(VALIDATED, "Unknown", FtjReason.VALIDATING)
    draft.set(ADMITTED, "Unknown", FtjReason.NOT_EVALUATED)
    draft.set(RUNNING, "False", FtjReason.NOT_STARTED)
    draft.set(SUSPENDED, "False", FtjReason.NOT_SUSPENDED)
    draft.set(COMPLETE, "False", FtjReason.NOT_COMPLETE)
    draft.set(FAILED, "False", FtjReason.NO_FAILURE)
    if job.spec.auto_deploy is not None:
        draft.set(DEPLOYED, "Unknown", FtjReason.DEPLOY_PENDING, "deployed when training succeeds")
    for cond in previous.conditions or []:  # keep what earlier reconciles established
        if cond.type in (VALIDATED, DEPLOYED) and cond.type in draft.conditions:
            draft.set(cond.type, cond.status, cond.reason, cond.message)
    return draft


def _with_progress(draft: _Draft, job: FineTuneJob, observed: Observed) -> None:
    progress = observed.progress
    if progress is None:
        return
    draft.fields["progress"] = progress_of(progress)
    if progress.checkpoints:
        draft.fields["checkpoints"] = checkpoints_of(progress)
    if progress.attempt > 1:
        draft.fields["retries"] = max(draft.fields.get("retries") or 0, progress.attempt - 1)


def _finish_succeeded(draft: _Draft, job: FineTuneJob, observed: Observed, now: datetime) -> None:
    draft.phase = "Succeeded"
    draft.set(RUNNING, "False", FtjReason.FINISHED)
    draft.set(COMPLETE, "True", FtjReason.TRAINING_SUCCEEDED, "adapter written")
    draft.fields.setdefault("completion_time", now)
    deploy = job.spec.auto_deploy
    draft.fields["adapter"] = AdapterStatus(
        uri=adapter_uri(job, observed.progress),
        model_deployment=deploy.model_deployment_ref.name if deploy else None,
        adapter_name=deploy.adapter_name if deploy else None,
    )
    _auto_deploy(draft, job, observed)


def _auto_deploy(draft: _Draft, job: FineTuneJob, observed: Observed) -> None:
    if job.spec.auto_deploy is None:
        return
    outcome = observed.deploy
    if outcome is not None:
        status: Literal["True", "False"] = "True" if outcome.deployed else "False"
        draft.set(DEPLOYED, status, outcome.reason, outcome.message)
    cond = draft.conditions.get(DEPLOYED)
    if cond is not None and cond.status == "True":
        return
    if job.spec.auto_deploy.evaluation is not None and not _gate_passed(draft, job, observed):
        return
    draft.actions.append("auto_deploy")


def _gate_passed(draft: _Draft, job: FineTuneJob, observed: Observed) -> bool:
    """Whether the deployment gate's Evaluation passed; else Deployed says how it stands (and
    `gate_evaluation` creates it when it does not exist yet)."""
    gate = observed.gate
    if gate is None or gate.phase is None:
        name = gate.name if gate is not None else "of the adapter"
        draft.set(DEPLOYED, "Unknown", EVALUATING, f"Evaluation {name}: creating it")
        draft.actions.append("gate_evaluation")
        return False
    if gate.phase == "Passed":
        return True
    if gate.phase in ("Failed", "Error"):
        adapter = draft.fields.get("adapter")
        stored = f"; the adapter stays at {adapter.uri}, not served" if adapter else ""
        message = f"Evaluation {gate.name} {gate.phase}: {gate.message or 'no message'}{stored}"
        draft.set(DEPLOYED, "False", EVALUATION_FAILED, message)
        return False
    draft.set(DEPLOYED, "Unknown", EVALUATING, f"Evaluation {gate.name}: {gate.phase}")
    return False


def _controls(draft: _Draft, job: FineTuneJob, rayjob: Mapping[str, Any]) -> None:
    """Job controls changed on a live RayJob are patched onto it."""
    current = rayjob.get("spec") or {}
    spec = job.spec
    if (
        current.get("backoffLimit") != spec.backoff_limit
        or current.get("activeDeadlineSeconds") != spec.active_deadline_seconds
    ):
        draft.actions.append("patch_rayjob_controls")


def _replace(draft: _Draft, job: FineTuneJob, observed: Observed) -> None:
    """Resumed with another spec: the RayJob goes, and quota and placement are decided anew."""
    draft.phase = "Queued"
    message = (
        "the spec changed while suspended: the RayJob is replaced and resumes from the last "
        "checkpoint once quota and placement are decided again"
    )
    draft.set(ADMITTED, "False", FtjReason.SPEC_CHANGED, message)
    draft.set(RUNNING, "False", FtjReason.SPEC_CHANGED, message)
    draft.fields.pop("ray_job", None)
    if not observed.pinned:
        draft.fields.pop("cluster", None)
    draft.actions.append("replace_rayjob")


def _from_rayjob(draft: _Draft, job: FineTuneJob, observed: Observed, now: datetime) -> None:
    state = RayJobState.of(observed.rayjob or {})
    draft.fields["retries"] = state.failed_attempts or None
    _with_progress(draft, job, observed)
    admitted = observed.admission is None or observed.admission.admitted
    live = not (state.succeeded or state.failed)
    stale = observed.rendered_hash is not None and observed.rendered_hash != observed.spec_hash
    if live and stale and observed.spec_hash is not None and not job.spec.suspend:
        _replace(draft, job, observed)
        return
    if live:
        _controls(draft, job, observed.rayjob or {})
    if job.spec.suspend:
        draft.phase = "Suspended"
        reason = FtjReason.SUSPENDED_BY_USER if state.suspended else FtjReason.SUSPENDING
        draft.set(SUSPENDED, "True", reason, "checkpoints kept; resumes when spec.suspend is false")
        draft.set(ADMITTED, "False", FtjReason.SUSPENDED_BY_USER, "quota released while suspended")
        if not state.suspend:
            draft.actions.append("suspend_rayjob")
        return
    if state.suspend:
        if not admitted:
            _queue(draft, observed.admission)
            return
        draft.phase = "Running"
        draft.set(ADMITTED, "True", FtjReason.ADMITTED)
        draft.set(RUNNING, "True", FtjReason.RESUMING, "resuming from the last checkpoint")
        draft.actions.append("resume_rayjob")
        return
    draft.set(ADMITTED, "True", FtjReason.ADMITTED)
    if state.succeeded:
        _finish_succeeded(draft, job, observed, now)
    elif state.failed:
        draft.phase = "Failed"
        reason = (
            FtjReason.DEADLINE_EXCEEDED
            if state.reason == REASON_DEADLINE_EXCEEDED
            else FtjReason.TRAINING_FAILED
        )
        detail = (observed.progress.message if observed.progress else None) or state.message
        draft.set(RUNNING, "False", FtjReason.FINISHED)
        draft.set(FAILED, "True", reason, detail or f"RayJob {state.deployment_status}")
        draft.fields.setdefault("completion_time", now)
    else:
        draft.phase = "Running"
        if state.deployment_status == DEPLOYMENT_RETRYING:
            reason, message = FtjReason.RETRYING, "retrying from the last checkpoint"
        elif state.deployment_status == DEPLOYMENT_RUNNING:
            reason, message = FtjReason.TRAINING, ""
        else:
            reason, message = FtjReason.STARTING, "Ray cluster starting"
        draft.set(RUNNING, "True", reason, message)


def _queue(draft: _Draft, admission: AdmissionResult | None) -> None:
    draft.phase = "Queued"
    draft.fields["queue_position"] = admission.queue_position if admission else None
    message = admission.reason if admission else "waiting for admission"
    draft.set(ADMITTED, "False", FtjReason.QUOTA_EXCEEDED, message)


def _before_rayjob(draft: _Draft, job: FineTuneJob, observed: Observed, now: datetime) -> None:
    if job.spec.suspend:
        draft.phase = "Suspended"
        draft.set(SUSPENDED, "True", FtjReason.SUSPENDED_BY_USER, "not started while suspended")
        draft.set(ADMITTED, "False", FtjReason.SUSPENDED_BY_USER)
        return
    admission = observed.admission
    if admission is None or not admission.admitted:
        _queue(draft, admission)
        return
    placement = observed.placement
    if placement is None or placement.cluster is None:
        draft.phase = "Queued"
        message = placement.message if placement else "no ComputeCluster known"
        draft.set(ADMITTED, "False", FtjReason.NO_ELIGIBLE_CLUSTER, message)
        return
    draft.phase = "Running"
    draft.fields["cluster"] = placement.cluster
    draft.fields["ray_job"] = job.metadata.name
    draft.fields.setdefault("start_time", now)
    draft.set(ADMITTED, "True", FtjReason.ADMITTED, placement.message)
    draft.set(RUNNING, "True", FtjReason.STARTING, "RayJob created")
    draft.actions.append("create_rayjob")


def _kept_fields(previous: FineTuneJobStatus) -> dict[str, Any]:
    names = ("estimate", "cluster", "ray_job", "progress", "checkpoints", "adapter")
    kept = {n: getattr(previous, n) for n in names if getattr(previous, n) is not None}
    for name in ("start_time", "completion_time", "retries"):
        if getattr(previous, name) is not None:
            kept[name] = getattr(previous, name)
    return kept


def decide(job: FineTuneJob, observed: Observed, now: datetime) -> Decision:
    """The job's next status and what the runtime must do about it."""
    previous = job.status or FineTuneJobStatus()
    if dry_run_lifted(job):  # the estimate was wanted first: now it trains
        previous = _reopened(previous)
    draft = _initial(job, previous)
    draft.fields.update(_kept_fields(previous))
    if previous.phase in TERMINAL:  # deleting a finished job cancels nothing
        return _terminal(job, previous, observed, now)
    if observed.deleting:
        draft.phase = "Cancelled"
        draft.set(RUNNING, "False", FtjReason.CANCELLED)
        draft.set(FAILED, "True", FtjReason.CANCELLED, "the FineTuneJob is being deleted")
        if observed.rayjob is not None:
            draft.actions.append("delete_rayjob")
        return _done(job, draft, previous, now)
    validation = observed.validation
    if validation is None and not was_validated(previous):
        draft.phase = "Validating"
        message = observed.validating or "checking the datasets"
        draft.set(VALIDATED, "Unknown", FtjReason.VALIDATING, message)
        if observed.placement is not None and observed.placement.cluster is not None:
            draft.fields["cluster"] = observed.placement.cluster  # validated there: kept
        draft.actions.append("validate")
        return _done(job, draft, previous, now)
    if validation is not None:
        if validation.estimate is not None:
            draft.fields["estimate"] = validation.estimate
        if not validation.ok:
            draft.phase = "FailedValidation"
            reason = validation.reason or FtjReason.INVALID_DATASET
            draft.set(VALIDATED, "False", reason, validation.message())
            draft.set(FAILED, "True", reason, validation.message())
            draft.fields.setdefault("completion_time", now)
            return _done(job, draft, previous, now)
        draft.set(VALIDATED, "True", FtjReason.DATASET_VALID, validation.message())
    if job.spec.dry_run:
        draft.phase = "Succeeded"
        draft.set(COMPLETE, "True", FtjReason.DRY_RUN, "estimate in status.estimate; not trained")
        draft.fields.setdefault("completion_time", now)
        return _done(job, draft, previous, now)
    if observed.base_model_error is not None and observed.rayjob is None:
        draft.phase = "Pending"
        draft.set(ADMITTED, "Unknown", FtjReason.BASE_MODEL_NOT_FOUND, observed.base_model_error)
        return _done(job, draft, previous, now)
    if observed.rayjob is None:
        _before_rayjob(draft, job, observed, now)
    else:
        _from_rayjob(draft, job, observed, now)
    return _done(job, draft, previous, now)


def _reopened(previous: FineTuneJobStatus) -> FineTuneJobStatus:
    """A finished dry run's status, as if it had only been validated."""
    return previous.model_copy(
        update={
            "phase": "Pending",
            "completion_time": None,
            "conditions": [c for c in previous.conditions or [] if c.type != COMPLETE],
        }
    )


def _terminal(
    job: FineTuneJob, previous: FineTuneJobStatus, observed: Observed, now: datetime
) -> Decision:
    """A finished job keeps its status; only a pending auto-deploy still acts."""
    if previous.phase != "Succeeded" or job.spec.auto_deploy is None or job.spec.dry_run:
        return Decision(previous)
    draft = _initial(job, previous)
    draft.fields.update(_kept_fields(previous))
    for cond in previous.conditions or []:
        draft.set(cond.type, cond.status, cond.reason, cond.message)
    draft.phase = "Succeeded"
    _auto_deploy(draft, job, observed)
    return _done(job, draft, previous, now)


def _done(job: FineTuneJob, draft: _Draft, previous: FineTuneJobStatus, now: datetime) -> Decision:
    generation = job.metadata.generation
    conditions = merge_conditions(
        list(draft.conditions.values()), previous.conditions, now, generation
    )
    if draft.phase != "Queued":
        draft.fields.pop("queue_position", None)
    status = FineTuneJobStatus(
        phase=draft.phase,
        observed_generation=generation,
        conditions=conditions,
        **draft.fields,
    )
    return Decision(status, tuple(draft.actions))
