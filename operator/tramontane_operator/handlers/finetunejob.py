"""FineTuneJobs: validate -> admit -> place -> RayJob -> progress -> auto-deploy.

Reconciled by the kind's `Controller` (`controller.py`), like every kind: a new or changed
job is queued at once; while a job is active it is looked at again every
`TRAMONTANE_FINETUNE_POLL_INTERVAL` seconds (a delayed re-queue, not a daemon), and when a
peer releases quota or GPUs, or a member changes health. The datasets are validated before
anything else — by a validation Job in the member cluster the job is placed in, in its
namespace, or (local mode, local files) in a worker thread here; a `file://` URI outside local
mode or a bad line ends the job in FailedValidation and no RayJob is ever written. Decisions
are the pure `reconcile.finetunejob*` functions; this module only observes, applies their
actions and writes the status when it changed.

Admission against the tenant's quota, placement against the one GPU ledger and the ledger's
update are one synchronous step (no `await`), after every read from member clusters and
before any write to them: two jobs never both take the last GPUs of a quota or a cluster,
and a slow member never holds up a decision about another. Our finalizer lands before any
RayJob exists; deleting a job deletes its RayJob (KubeRay then stops the Ray cluster) before
the finalizer goes, and releases its quota.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from tramontane_api.v1alpha1 import FineTuneJob, FineTuneJobStatus, Tenant
from tramontane_kube import FINETUNEJOB
from tramontane_operator.builders.rayjob import claim_uses, rendered_hash, spec_hash
from tramontane_operator.builders.volumes import pod_volumes
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.placement import ClusterView
from tramontane_operator.reconcile.admission import admission_for, job_workload
from tramontane_operator.reconcile.conditions import find
from tramontane_operator.reconcile.finetunejob import (
    DEPLOYED,
    TERMINAL,
    Decision,
    Observed,
    decide,
    finished,
    holds_quota,
    was_validated,
)
from tramontane_operator.reconcile.finetunejob_deploy import (
    EVALUATION_FAILED,
    GateOutcome,
    gate_name,
    gate_outcome,
)
from tramontane_operator.reconcile.finetunejob_estimate import report_result
from tramontane_operator.reconcile.finetunejob_inputs import (
    AdmissionResult,
    JobPlacement,
    ValidationResult,
    place_job,
)
from tramontane_operator.reconcile.finetunejob_trust import (
    local_path_refusal,
    needs_cluster_validation,
    reads_base_model,
    unread_model_size,
)
from tramontane_operator.reconcile.finetunejob_validation import ClusterValidation, uses_claims
from tramontane_workers.contract.datasets_report import DatasetsReport
from tramontane_workers.contract.train_config import TrainProgress

from . import finetunejob_io as io
from .batch import BatchController, delete_rayjobs, write_phase_status
from .controller import Key, Retry, key_of
from .finetunejob_children import apply_actions, base_model, read_progress, read_rayjob
from .finetunejob_validation import delete_validation_job, validate_in_cluster
from .parsing import parse_resource
from .runtime import (
    FINETUNEJOBS,
    MODELDEPLOYMENTS,
    Runtime,
    allowed_views,
    waiting_in,
    with_allocations,
)

log = logging.getLogger(__name__)

POLL_ENV: Final = "TRAMONTANE_FINETUNE_POLL_INTERVAL"
DEFAULT_POLL_S: Final = 10.0


def poll_interval(env: Mapping[str, str] | None = None) -> float:
    value = (os.environ if env is None else env).get(POLL_ENV)
    try:
        return float(value) if value else DEFAULT_POLL_S
    except ValueError:
        raise ValueError(f"{POLL_ENV}: expected seconds, got {value!r}") from None


class FineTuneJobs(BatchController):
    """The controller of FineTuneJobs."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(
            rt, FINETUNEJOBS, FINETUNEJOB, reconcile, cleanup, TERMINAL, poll_interval()
        )


def _key_of(job: FineTuneJob) -> Key:
    return (job.metadata.namespace or "", job.metadata.name)


def _parse(rt: Runtime, body: Mapping[str, Any]) -> FineTuneJob:
    job = parse_resource(FineTuneJob, body)
    fresher = rt.last_status(FINETUNEJOBS, body)
    if isinstance(fresher, FineTuneJobStatus):
        return job.model_copy(update={"status": fresher})
    return job


async def reconcile(rt: Runtime, body: Mapping[str, Any], poll_s: float) -> Decision:
    key = key_of(body)
    with reconcile_scope("FineTuneJob", *key) as scope:
        job = _parse(rt, body)
        validation = None
        phase = job.status.phase if job.status else None
        if not was_validated(job.status) and phase not in TERMINAL:
            job, validation = await _validate(rt, job, poll_s)
        decision = await _step(rt, job, validation)
        scope.outcome = decision.phase or "unknown"
        scope.clusters = decision.status.cluster or ""
        return decision


async def _validate(
    rt: Runtime, job: FineTuneJob, poll_s: float
) -> tuple[FineTuneJob, ValidationResult]:
    """The datasets' validation result (and the job as last written); while there is none,
    Validating with how it goes in the `Validated` condition, and a `Retry`."""
    base_uri, _ = await base_model(rt, job)
    local_mode = rt.settings.local_mode
    refused = local_path_refusal(job, base_uri, local_mode)
    if refused is not None:  # before anything is read: the operator's files are not tenants'
        return job, refused
    try:  # claims are immutable like the files: a bad one can never be read
        pod_volumes(claim_uses(job, base_uri or ""))
    except ValueError as exc:
        return job, ValidationResult(False, (str(exc),))
    if needs_cluster_validation(job):
        job, report = await _validate_in_cluster(rt, job, poll_s)
    else:  # local mode, local files only
        if job.status is None or job.status.phase != "Validating":
            job = await _write(rt, job, decide(job, Observed(), _now()).status)
        report = await asyncio.to_thread(io.validate_datasets, job)
    if report.unreadable is not None:
        placement = JobPlacement(job.status.cluster if job.status else None, "")
        observed = Observed(validating=f"cannot read: {report.unreadable}", placement=placement)
        await _write(rt, job, decide(job, observed, _now()).status)
        raise Retry(f"dataset unreadable: {report.unreadable}", poll_s)
    size = None
    if base_uri and reads_base_model(base_uri, local_mode):
        size = await asyncio.to_thread(io.model_params, base_uri)
    elif base_uri:
        size = unread_model_size(base_uri)
    clusters = rt.indexes.compute_clusters()
    return job, report_result(job, report, size, clusters)


async def _validate_in_cluster(
    rt: Runtime, job: FineTuneJob, poll_s: float
) -> tuple[FineTuneJob, DatasetsReport]:
    """Datasets the operator does not read: place the job (for good: claims are cluster-local,
    and the job runs where it was validated), then run the validation Job there, in the job's
    namespace, until it reports."""
    namespace = job.metadata.namespace or "default"
    tenant = rt.indexes.tenant_object(namespace)
    views = await _views(rt, job, tenant)
    current = job.status.cluster if job.status else None
    if current is not None:  # placed for good, even while its cluster is unreachable
        placement = JobPlacement(current, f"placed in {current}")
    else:
        placement = place_job(job, list(views.values()), None)
    view = views.get(placement.cluster) if placement.cluster else None
    if view is None and current is not None:
        outcome = ClusterValidation(message=f"waiting for ComputeCluster {current}, the job's")
    elif view is None:
        message = f"waiting for a cluster to validate the datasets in: {placement.message}"
        outcome = ClusterValidation(message=message)
    else:
        tenant_name = tenant.metadata.name if tenant else None
        outcome = await validate_in_cluster(rt, job, view, tenant_name, _now())
    if outcome.report is not None:
        return job, outcome.report
    observed = Observed(validating=outcome.message, placement=placement)
    job = await _write(rt, job, decide(job, observed, _now()).status)
    raise Retry(outcome.message, poll_s)


async def _views(rt: Runtime, job: FineTuneJob, tenant: Tenant | None) -> dict[str, ClusterView]:
    """The clusters the job's tenant may use, with what the ledger holds there (but this
    job's own GPUs). The member I/O (connecting new ones) happens here, before a decision."""
    views = await rt.cluster_views(rt.indexes.compute_clusters(), {})
    held = rt.ledger.allocations(exclude=job_workload(job).key)
    return with_allocations(allowed_views(views, tenant), held)


async def _step(rt: Runtime, job: FineTuneJob, validation: ValidationResult | None) -> Decision:
    namespace, name = _key_of(job)
    base_uri, base_error_or_name = await base_model(rt, job)
    base_error = base_error_or_name if base_uri is None else None
    terminal = finished(job)
    if validation is None and not terminal and not (job.status and job.status.ray_job):
        # A base model's ModelDeployment that appeared after validation: a local source is
        # refused before any RayJob exists, as a local `baseModel.uri` was in `_validate`.
        validation = local_path_refusal(job, base_uri, rt.settings.local_mode)
    tenant = rt.indexes.tenant_object(namespace)
    current = held_cluster(rt, job)
    # Every read from members first: the decision below takes no `await`.
    views = await _views(rt, job, tenant)
    rayjob: dict[str, Any] | None = None
    progress = None
    if current is not None:
        if not terminal:
            rayjob = await read_rayjob(rt, current, namespace, name, True)
        progress = await read_progress(rt, job, current, rayjob, terminal)
    gate = _gate(rt, job)
    observed, decision, released = decide_step(
        rt, job, tenant, views, current, rayjob, progress, validation, base_error, _now(), gate
    )
    cluster = current or (observed.placement.cluster if observed.placement else None)
    # Then the writes.
    deploy = await apply_actions(
        rt, job, decision, cluster, views, tenant, base_uri, base_error_or_name
    )
    if deploy is not None:
        decision = decide(job, dataclasses.replace(observed, deploy=deploy), _now())
    adapter_new = decision.status.adapter is not None and (
        job.status is None or job.status.adapter != decision.status.adapter
    )
    _gate_event(rt, job, decision.status)
    await _write(rt, job, decision.status)
    if released:
        rt.wake_tenant(namespace)  # a queued peer may fit now
    if adapter_new:
        rt.wake_all(MODELDEPLOYMENTS)  # those naming this job in `fineTuneJobRef` serve it now
    return decision


def held_cluster(rt: Runtime, job: FineTuneJob) -> str | None:
    """Where the job holds GPUs: its status, else the ledger (rebuilt from the RayJobs that
    exist: a crash may have kept one out of the status)."""
    held = rt.ledger.get(job_workload(job).key)
    return (job.status.cluster if job.status else None) or (
        next(iter(held.clusters), None) if held is not None else None
    )


def decide_step(
    rt: Runtime,
    job: FineTuneJob,
    tenant: Tenant | None,
    views: Mapping[str, ClusterView],
    current: str | None,
    rayjob: Mapping[str, Any] | None,
    progress: TrainProgress | None,
    validation: ValidationResult | None,
    base_error: str | None,
    now: datetime,
    gate: GateOutcome | None = None,
) -> tuple[Observed, Decision, bool]:
    """One synchronous step after the reads: admission, placement, the phase machine and the
    ledger's entry (no `await`: no other decision reads the ledger in between). What was
    observed, the decision, and whether the job released GPUs or quota."""
    admission = _admission(rt, job, tenant)
    placement = place_job(job, list(views.values()), current)
    if rayjob is None and current is not None and not finished(job):
        placement = _within(job, views, current)  # kept there, if it fits (again)
    observed = Observed(
        validation=validation,
        base_model_error=base_error,
        admission=admission,
        placement=placement,
        rayjob=rayjob,
        progress=progress,
        spec_hash=spec_hash(job),
        rendered_hash=rendered_hash(rayjob) if rayjob is not None else None,
        pinned=uses_claims(job),
        gate=gate,
    )
    decision = decide(job, observed, now)
    return observed, decision, _account(rt, job, decision.status)


def _gate(rt: Runtime, job: FineTuneJob) -> GateOutcome | None:
    """The deployment gate's Evaluation, from the hub cache (None: the job has no gate)."""
    deploy = job.spec.auto_deploy
    if deploy is None or deploy.evaluation is None:
        return None
    namespace, _ = _key_of(job)
    found = [e for e in rt.indexes.evaluations.parsed_in([namespace])
             if e.metadata.name == gate_name(job)]  # fmt: skip
    return gate_outcome(job, found[0] if found else None)


def _gate_event(rt: Runtime, job: FineTuneJob, status: FineTuneJobStatus) -> None:
    """A Warning when the gate newly keeps the adapter from being deployed."""
    now = find(status.conditions, DEPLOYED)
    before = find(job.status.conditions if job.status else None, DEPLOYED)
    if now is None or now.reason != EVALUATION_FAILED:
        return
    if before is None or before.reason != EVALUATION_FAILED or before.message != now.message:
        rt.events.post(job, "Warning", EVALUATION_FAILED, now.message)


def _admission(rt: Runtime, job: FineTuneJob, tenant: Tenant | None) -> AdmissionResult:
    workload = job_workload(job)
    if tenant is None or workload.key in rt.ledger:
        return AdmissionResult(admitted=True)
    namespaces = tenant.spec.namespaces
    held = rt.ledger.held_in(namespaces)
    others = waiting_in(rt.indexes, namespaces, held)
    return admission_for(workload, tenant, held, others)


def _account(rt: Runtime, job: FineTuneJob, status: FineTuneJobStatus) -> bool:
    """Hold the job's GPUs and quota in the ledger while its new status holds them, release
    them when it no longer does; whether they were released."""
    key = job_workload(job).key
    if holds_quota(status) and status.cluster:
        rt.ledger.hold(job_workload(job.model_copy(update={"status": status}), status.cluster))
        return False
    return rt.ledger.release(key) is not None


def _within(job: FineTuneJob, views: Mapping[str, ClusterView], cluster: str) -> JobPlacement:
    """Placement in the job's own cluster (validated there, or resumed there), capacity checked."""
    placed = place_job(job, [views[cluster]] if cluster in views else [], None)
    if placed.cluster is None:
        return JobPlacement(None, f"{placed.message}; the job stays in {cluster}")
    return placed


async def _write(rt: Runtime, job: FineTuneJob, status: FineTuneJobStatus) -> FineTuneJob:
    """Write `status` if it differs from the job's (an Event when its phase changed); the
    job as it now is."""
    if await write_phase_status(rt, FINETUNEJOBS, FINETUNEJOB, job, _key_of(job), status):
        kind = "Warning" if status.phase in ("Failed", "FailedValidation") else "Normal"
        rt.events.post(job, kind, status.phase or "Unknown", f"phase {status.phase}")
    return job.model_copy(update={"status": status})


async def cleanup(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Cancel: delete the RayJob wherever it may be; `Retry` until it is gone."""
    namespace, name = key_of(body)
    job = _parse(rt, body)
    job = await _write(rt, job, decide(job, Observed(deleting=True), _now()).status)

    placed = job.status.cluster if job.status else None
    waiting_on = await delete_rayjobs(rt, "FineTuneJob", name, namespace, name, placed)
    cluster = job.status.cluster if job.status else None
    if cluster and needs_cluster_validation(job):
        await delete_validation_job(rt, job, cluster)
    if waiting_on:
        raise Retry(f"RayJob not yet deleted in: {', '.join(waiting_on)}")


def _now() -> datetime:
    return datetime.now(UTC)
