"""The Evaluation phase machine: (spec, what was observed) -> status and the actions to take.

Pure. Phases: Pending -> Queued -> Running -> Passed | Failed | Error.

- The models are resolved first (`evaluation_inputs.resolve`): a ModelDeployment, an adapter
  or a FineTuneJob not there yet is Pending; a FineTuneJob that ended without an adapter, or a
  `file://` URI outside local mode, is Error.
- The dataset is validated (condition `Validated`) before any GPU is used (a validation Job
  in the member cluster, or here in local mode): while there is no result, Pending with
  action `validate`; bad lines are Error with reason `InvalidDataset` and never a RayJob.
- Admission (the tenant's GPU quota: one pool of the ModelDeployment's GPUs) and placement
  (the tenant's allowed clusters with those GPUs free): Queued with a position, or the reason;
  else Running with action `create_rayjob`.
- The RayJob's status and the evaluator's last result (read from the submitter's log) drive
  the rest: the result of a finished run is judged against `spec.metrics` (`judge`): Passed or
  Failed; a run that failed, or finished without a result, is Error.
- Each spec change (its generation; `spec.runId` is in the spec) is a new run: the previous
  status is dropped, a RayJob rendered for another generation is deleted (`replace_rayjob`)
  and the new run starts over. A finished run stays as it is until then.
- Deleting: `delete_rayjob` while the RayJob exists; the status stays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from tramontane_api.v1alpha1 import Evaluation, EvaluationStatus
from tramontane_api.v1alpha1.evaluation import (
    EvaluationPhase,
    FailingSample,
    MetricResult,
    MetricThreshold,
)
from tramontane_operator.builders.evaluation_rayjob import RUN_ANNOTATION, eval_rayjob_name
from tramontane_workers.contract.eval_config import LOWER_IS_BETTER, EvalResult

from .conditions import ConditionSpec, find, merge_conditions
from .evaluation_inputs import EvalValidation, Resolution
from .finetunejob_inputs import AdmissionResult, JobPlacement, RayJobState

# Condition types.
VALIDATED: Final = "Validated"
ADMITTED: Final = "Admitted"
EVALUATED: Final = "Evaluated"
PASSED: Final = "Passed"
TERMINAL: Final = frozenset({"Passed", "Failed", "Error"})

Action = Literal["validate", "create_rayjob", "replace_rayjob", "delete_rayjob"]


class EvReason:
    """Every Evaluation condition reason."""

    NOT_EVALUATED: Final = "NotEvaluated"
    WAITING: Final = "WaitingForInputs"
    INVALID_INPUT: Final = "InvalidInput"
    VALIDATING: Final = "Validating"
    INVALID_DATASET: Final = "InvalidDataset"
    ADMITTED: Final = "QuotaAvailable"
    QUOTA_EXCEEDED: Final = "QuotaExceeded"
    NO_ELIGIBLE_CLUSTER: Final = "NoEligibleCluster"
    STARTING: Final = "Starting"
    RUNNING: Final = "Running"
    SCORED: Final = "Scored"
    RUN_FAILED: Final = "RunFailed"
    NO_RESULT: Final = "NoResult"
    THRESHOLDS_MET: Final = "ThresholdsMet"
    THRESHOLDS_MISSED: Final = "ThresholdsMissed"
    NEW_RUN: Final = "NewRun"
    DATASET_VALID: Final = "DatasetValid"


@dataclass(frozen=True)
class Observed:
    """Everything the runtime observed or decided for one reconcile of one Evaluation."""

    resolution: Resolution | None = None
    validation: EvalValidation | None = None
    validating: str | None = None  # how validation goes, while there is no result
    admission: AdmissionResult | None = None
    placement: JobPlacement | None = None
    rayjob: Mapping[str, Any] | None = None
    result: EvalResult | None = None
    deleting: bool = False


@dataclass(frozen=True)
class Decision:
    status: EvaluationStatus
    actions: tuple[Action, ...] = ()

    @property
    def phase(self) -> EvaluationPhase | None:
        return self.status.phase


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def threshold_text(t: MetricThreshold) -> str | None:
    """What the metric must reach, readable: `>= 0.8`, `<= 1.2`, `delta >= 0.05`; lower-is-
    better metrics' minDelta reads `delta <= -0.05` (the score must fall by that much)."""
    parts = []
    if t.min is not None:
        parts.append(f">= {t.min:g}")
    if t.max is not None:
        parts.append(f"<= {t.max:g}")
    if t.min_delta is not None:
        if t.name in LOWER_IS_BETTER:
            parts.append(f"delta <= {-t.min_delta:g}")
        else:
            parts.append(f"delta >= {t.min_delta:g}")
    return " and ".join(parts) or None


def passes(t: MetricThreshold, score: float | None, baseline: float | None) -> bool | None:
    """Whether `score` meets every threshold of `t` (None: no threshold set). A missing score
    (or a missing baseline score, for minDelta) misses the threshold."""
    checks: list[bool] = []
    if t.min is not None:
        checks.append(score is not None and score >= t.min)
    if t.max is not None:
        checks.append(score is not None and score <= t.max)
    if t.min_delta is not None:
        if score is None or baseline is None:
            checks.append(False)
        else:
            gain = baseline - score if t.name in LOWER_IS_BETTER else score - baseline
            checks.append(gain >= t.min_delta)
    return all(checks) if checks else None


def judge(metrics: Sequence[MetricThreshold], result: EvalResult) -> list[MetricResult]:
    """One result per metric of the spec: the scores, the delta and the verdict."""
    target = {m.metric: m for m in result.target}
    base = {m.metric: m for m in result.baseline}
    out = []
    for t in metrics:
        own = target.get(t.name)
        score = own.score if own is not None else None
        other = base.get(t.name)
        baseline = other.score if other is not None else None
        delta = score - baseline if score is not None and baseline is not None else None
        out.append(
            MetricResult(
                metric=t.name,
                score=score,
                baseline=baseline,
                delta=delta,
                threshold=threshold_text(t),
                passed=passes(t, score, baseline),
                samples=own.samples if own is not None else None,
            )
        )
    return out


def missed(results: Sequence[MetricResult]) -> list[str]:
    """Each failed threshold in words: `exactMatch 0.5 misses >= 0.8 (baseline 0.4, delta
    0.1)`."""
    out = []
    for r in results:
        if r.passed is not False:
            continue
        text = f"{r.metric} {_num(r.score)} misses {r.threshold}"
        if r.baseline is not None or r.delta is not None:
            text += f" (baseline {_num(r.baseline)}, delta {_num(r.delta)})"
        out.append(text)
    return out


def rendered_run(rayjob: Mapping[str, Any]) -> str | None:
    annotations = (rayjob.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(RUN_ANNOTATION)
    return str(value) if value is not None else None


def run_of(ev: Evaluation) -> str:
    """The run a RayJob of `ev` is rendered for now: its generation."""
    return str(ev.metadata.generation or 0)


def was_validated(ev: Evaluation) -> bool:
    """Whether the current run's dataset was found valid by an earlier reconcile."""
    status = ev.status
    if status is None or status.observed_generation != ev.metadata.generation:
        return False
    cond = find(status.conditions, VALIDATED)
    return cond is not None and cond.status == "True"


def holds_quota(status: EvaluationStatus | None) -> bool:
    """Whether the Evaluation holds its tenant's quota now (admitted, its run not finished)."""
    if status is None or status.phase != "Running":
        return False
    cond = find(status.conditions, ADMITTED)
    return cond is not None and cond.status == "True"


def finished(ev: Evaluation) -> bool:
    """Whether the current generation's run is over."""
    status = ev.status
    return (
        status is not None
        and status.phase in TERMINAL
        and status.observed_generation == ev.metadata.generation
    )


@dataclass
class _Draft:
    phase: EvaluationPhase
    conditions: dict[str, ConditionSpec]
    fields: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)

    def set(
        self, type_: str, status: Literal["True", "False", "Unknown"], reason: str, message: str
    ) -> None:
        self.conditions[type_] = ConditionSpec(type_, status, reason, message)

    def error(self, reason: str, message: str) -> None:
        self.phase = "Error"
        self.set(EVALUATED, "False", reason, message)
        self.fields["message"] = message


_KEPT = ("cluster", "ray_job", "started_at", "completed_at", "samples", "done", "results")


def decide(ev: Evaluation, observed: Observed, now: datetime) -> Decision:
    """The Evaluation's next status and what the runtime must do about it."""
    previous = ev.status or EvaluationStatus()
    same_run = previous.observed_generation == ev.metadata.generation
    rayjob = observed.rayjob
    stale = rayjob is not None and rendered_run(rayjob) != run_of(ev)
    if observed.deleting:
        actions: tuple[Action, ...] = ("delete_rayjob",) if rayjob is not None else ()
        return Decision(previous, actions)
    if same_run and previous.phase in TERMINAL and not stale:
        return Decision(previous)
    draft = _Draft(phase="Pending", conditions={})
    draft.set(VALIDATED, "Unknown", EvReason.VALIDATING, "")
    draft.set(ADMITTED, "Unknown", EvReason.NOT_EVALUATED, "")
    draft.set(EVALUATED, "Unknown", EvReason.NOT_EVALUATED, "")
    draft.set(PASSED, "Unknown", EvReason.NOT_EVALUATED, "")
    if same_run:
        draft.fields.update({n: getattr(previous, n) for n in _KEPT if getattr(previous, n)})
        kept = find(previous.conditions, VALIDATED)
        if kept is not None:  # the dataset of this run was validated before
            draft.set(VALIDATED, kept.status, kept.reason, kept.message)
    if stale:  # a previous run's RayJob: it goes first
        message = f"run {run_of(ev)}: deleting the previous run's RayJob"
        draft.set(EVALUATED, "Unknown", EvReason.NEW_RUN, message)
        draft.fields = {"message": message, "cluster": previous.cluster}  # where it is
        draft.actions.append("replace_rayjob")
    elif rayjob is None:
        _before_rayjob(draft, ev, observed, now)
    else:
        _from_rayjob(draft, ev, observed, now)
    return _done(ev, draft, previous, now)


def _before_rayjob(draft: _Draft, ev: Evaluation, observed: Observed, now: datetime) -> None:
    resolution = observed.resolution
    if resolution is None or resolution.waiting is not None:
        message = resolution.waiting if resolution else "resolving the models"
        draft.set(EVALUATED, "Unknown", EvReason.WAITING, message or "")
        draft.fields["message"] = message
        return
    if resolution.error is not None:
        draft.error(resolution.reason or EvReason.INVALID_INPUT, resolution.error)
        return
    validation = observed.validation
    if observed.placement is not None and observed.placement.cluster is not None:
        draft.fields["cluster"] = observed.placement.cluster  # validated there: runs there
    if validation is None and draft.conditions[VALIDATED].status != "True":
        message = observed.validating or "validating the dataset"
        draft.set(VALIDATED, "Unknown", EvReason.VALIDATING, message)
        draft.fields["message"] = message
        draft.actions.append("validate")
        return
    if validation is not None and not validation.ok:
        draft.set(VALIDATED, "False", validation.reason, validation.message)
        draft.error(validation.reason, validation.message)
        draft.fields.setdefault("completed_at", now)
        return
    if validation is not None:
        draft.set(VALIDATED, "True", EvReason.DATASET_VALID, validation.message)
    admission = observed.admission
    if admission is None or not admission.admitted:
        draft.phase = "Queued"
        draft.fields["queue_position"] = admission.queue_position if admission else None
        reason = admission.reason if admission else "waiting for admission"
        draft.set(ADMITTED, "False", EvReason.QUOTA_EXCEEDED, reason)
        draft.fields["message"] = reason
        return
    placement = observed.placement
    if placement is None or placement.cluster is None:
        draft.phase = "Queued"
        message = placement.message if placement else "no ComputeCluster known"
        draft.set(ADMITTED, "False", EvReason.NO_ELIGIBLE_CLUSTER, message)
        draft.fields["message"] = message
        return
    draft.phase = "Running"
    draft.fields["cluster"] = placement.cluster
    draft.fields["ray_job"] = eval_rayjob_name(ev)
    draft.fields.setdefault("started_at", now)
    draft.set(ADMITTED, "True", EvReason.ADMITTED, placement.message)
    draft.set(EVALUATED, "Unknown", EvReason.STARTING, "RayJob created")
    draft.fields["message"] = f"evaluating in {placement.cluster}"
    draft.actions.append("create_rayjob")


def _from_rayjob(draft: _Draft, ev: Evaluation, observed: Observed, now: datetime) -> None:
    state = RayJobState.of(observed.rayjob or {})
    result = observed.result
    draft.set(ADMITTED, "True", EvReason.ADMITTED, "")
    if result is not None:
        draft.fields["samples"] = result.samples
        draft.fields["done"] = result.done
    done = result is not None and result.state != "running"
    if done or state.succeeded or state.failed:
        draft.fields.setdefault("completed_at", now)
    if result is not None and result.state == "succeeded":
        _judged(draft, ev, result)
    elif result is not None and result.state == "failed":
        draft.error(EvReason.RUN_FAILED, result.message or "the evaluator failed")
    elif state.failed:
        draft.error(EvReason.RUN_FAILED, state.message or f"RayJob {state.deployment_status}")
    elif state.succeeded:
        draft.error(EvReason.NO_RESULT, "the RayJob succeeded but the evaluator's log holds no "
                    "result (the submitter pod's log was not readable)")  # fmt: skip
    else:
        draft.phase = "Running"
        progress = f"{result.done} of {result.samples} samples" if result else "starting"
        reason = EvReason.RUNNING if result is not None else EvReason.STARTING
        draft.set(EVALUATED, "Unknown", reason, progress)
        draft.fields["message"] = f"evaluating in {draft.fields.get('cluster')}: {progress}"


def _judged(draft: _Draft, ev: Evaluation, result: EvalResult) -> None:
    results = judge(ev.spec.metrics, result)
    draft.fields["results"] = results
    draft.fields["failing_samples"] = [
        FailingSample(line=s.line, input=s.input, expected=s.expected, got=s.got)
        for s in result.failing_samples[: ev.spec.failing_samples]
    ] or None
    summary = ", ".join(f"{r.metric} {_num(r.score)}" for r in results)
    draft.set(EVALUATED, "True", EvReason.SCORED, f"{result.samples} samples: {summary}")
    failures = missed(results)
    if failures:
        draft.phase = "Failed"
        message = "; ".join(failures)
        draft.set(PASSED, "False", EvReason.THRESHOLDS_MISSED, message)
    else:
        draft.phase = "Passed"
        message = "every threshold met"
        draft.set(PASSED, "True", EvReason.THRESHOLDS_MET, message)
    draft.fields["message"] = message


def _done(ev: Evaluation, draft: _Draft, previous: EvaluationStatus, now: datetime) -> Decision:
    generation = ev.metadata.generation
    conditions = merge_conditions(
        list(draft.conditions.values()), previous.conditions, now, generation
    )
    if draft.phase != "Queued":
        draft.fields.pop("queue_position", None)
    status = EvaluationStatus(
        phase=draft.phase, observed_generation=generation, conditions=conditions, **draft.fields
    )
    return Decision(status, tuple(draft.actions))
