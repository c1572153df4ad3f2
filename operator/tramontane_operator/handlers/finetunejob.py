"""FineTuneJob handlers: validate -> admit -> place -> RayJob -> progress -> auto-deploy.

Kopf's change handlers and a per-job daemon (polling the RayJob and `progress.json` every
`TRAMONTANE_FINETUNE_POLL_INTERVAL` seconds while the job is active, or woken when a peer's
quota is released) run the same level-triggered `reconcile`. The datasets are validated in a
worker thread before anything else; a bad line ends the job in FailedValidation and no RayJob
is ever written. Decisions are the pure `reconcile.finetunejob*` functions; this module only
observes, applies their actions and writes the status when it changed. Admission and status
writes of all jobs are serialised, so two jobs never both take the last GPUs of a quota.
Deleting a job deletes its RayJob (KubeRay then stops the Ray cluster) before the finalizer goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import kopf

from tramontane_api.v1alpha1 import (
    GROUP,
    VERSION,
    FineTuneJob,
    FineTuneJobStatus,
)
from tramontane_kube import FINETUNEJOB, ApiError, Unreachable
from tramontane_operator.builders.labels import OWNER_KIND_LABEL, OWNER_NAME_LABEL
from tramontane_operator.builders.rayjob import claim_uses, rendered_hash, spec_hash
from tramontane_operator.builders.volumes import pod_volumes
from tramontane_operator.observability import PhaseTracker, reconcile_scope
from tramontane_operator.placement import ClusterView, gpu_allocations
from tramontane_operator.quotas import tenant_for_namespace
from tramontane_operator.reconcile.conditions import status_differs
from tramontane_operator.reconcile.finetunejob import (
    TERMINAL,
    Decision,
    Observed,
    decide,
    finished,
    holds_quota,
    was_validated,
)
from tramontane_operator.reconcile.finetunejob_estimate import report_result
from tramontane_operator.reconcile.finetunejob_inputs import (
    JobPlacement,
    ValidationResult,
    place_job,
)
from tramontane_operator.reconcile.finetunejob_quota import admission_for
from tramontane_operator.reconcile.finetunejob_validation import (
    ClusterValidation,
    needs_cluster_validation,
    uses_claims,
)
from tramontane_workers.contract.datasets_report import DatasetsReport

from . import finetunejob_io as io
from .finetunejob_children import RAYJOB, apply_actions, base_model, read_progress, read_rayjob
from .finetunejob_validation import delete_validation_job, validate_in_cluster
from .parsing import parse_resource
from .runtime import Key, Runtime

log = logging.getLogger(__name__)

PLURAL: Final = "finetunejobs"
POLL_ENV: Final = "TRAMONTANE_FINETUNE_POLL_INTERVAL"
DEFAULT_POLL_S: Final = 10.0


class FineTuneState:
    """What the FineTuneJob handlers share: statuses written, wake-ups, the admission lock."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self.admission = asyncio.Lock()
        self.statuses: dict[Key, tuple[str | None, FineTuneJobStatus]] = {}
        self.wakeups: dict[Key, asyncio.Event] = {}
        self.phases = PhaseTracker("FineTuneJob")

    def last_status(self, job: FineTuneJob) -> FineTuneJobStatus | None:
        found = self.statuses.get(_key_of(job))
        return found[1] if found is not None and found[0] == job.metadata.uid else None

    def wake_all(self) -> None:
        for wakeup in self.wakeups.values():
            wakeup.set()


def poll_interval(env: Mapping[str, str] | None = None) -> float:
    value = (os.environ if env is None else env).get(POLL_ENV)
    try:
        return float(value) if value else DEFAULT_POLL_S
    except ValueError:
        raise ValueError(f"{POLL_ENV}: expected seconds, got {value!r}") from None


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    state = FineTuneState(poll_interval())

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def ftj_changed(body: kopf.Body, **_: Any) -> None:
        decision = await reconcile(rt, state, body)
        wakeup = state.wakeups.get(_key(body))
        if decision is not None and decision.phase not in TERMINAL and wakeup is not None:
            wakeup.set()  # the daemon may sleep a resync interval (a finished dry run reopened)

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=1.0)
    async def ftj_follow(stopped: kopf.DaemonStopped, body: kopf.Body, **_: Any) -> None:
        await _follow(rt, state, stopped, body)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def ftj_deleted(body: kopf.Body, **_: Any) -> None:
        await cleanup(rt, state, body)


def _key_of(job: FineTuneJob) -> Key:
    return (job.metadata.namespace or "default", job.metadata.name)


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "default", meta["name"])


def _parse(state: FineTuneState, body: Mapping[str, Any]) -> FineTuneJob:
    job = parse_resource(FineTuneJob, body)
    fresher = state.last_status(job)
    return job.model_copy(update={"status": fresher}) if fresher is not None else job


async def _follow(
    rt: Runtime,
    state: FineTuneState,
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
) -> None:
    key = _key(body)
    event = state.wakeups.setdefault(key, asyncio.Event())
    delay = state.poll_s
    while not stopped:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), delay)
        event.clear()
        if stopped or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            decision = await reconcile(rt, state, body)
            done = decision is not None and decision.phase in TERMINAL and not decision.actions
            delay = rt.settings.resync_interval_s if done else state.poll_s
        except (kopf.TemporaryError, kopf.PermanentError):
            delay = state.poll_s
        except Exception:
            log.exception("reconcile of FineTuneJob %s/%s failed", *key)
            delay = state.poll_s


def _jobs(rt: Runtime, state: FineTuneState, job: FineTuneJob) -> list[FineTuneJob]:
    """Every FineTuneJob with the newest status we know; `job` as this reconcile sees it (the
    hub cache may not have it yet, or an older version)."""
    jobs = [j for j in rt.indexes.jobs() if j.metadata.uid != job.metadata.uid]
    jobs = [j.model_copy(update={"status": state.last_status(j) or j.status}) for j in jobs]
    return [*jobs, job]


async def reconcile(rt: Runtime, state: FineTuneState, body: Mapping[str, Any]) -> Decision | None:
    key = _key(body)
    await rt.indexes.synced()
    async with rt.lock(("FineTuneJob/" + key[0], key[1])):
        with reconcile_scope("FineTuneJob", *key) as scope:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                scope.outcome = "deleting"
                return None
            job = _parse(state, body)
            validation = None
            phase = job.status.phase if job.status else None
            if not was_validated(job.status) and phase not in TERMINAL:
                job, validation = await _validate(rt, state, job)
            decision = await _step(rt, state, job, validation)
            scope.outcome = decision.phase or "unknown"
            scope.clusters = decision.status.cluster or ""
            return decision


async def _validate(
    rt: Runtime, state: FineTuneState, job: FineTuneJob
) -> tuple[FineTuneJob, ValidationResult]:
    """The datasets' validation result (and the job as last written); while there is none,
    Validating with how it goes in the `Validated` condition, and a TemporaryError."""
    base_uri, _ = await base_model(rt, job)
    try:  # claims are immutable like the files: a bad one can never be read
        pod_volumes(claim_uses(job, base_uri or ""))
    except ValueError as exc:
        return job, ValidationResult(False, (str(exc),))
    if needs_cluster_validation(job):
        job, report = await _validate_in_cluster(rt, state, job)
    else:
        if job.status is None or job.status.phase != "Validating":
            job = await _write(rt, state, job, decide(job, Observed(), _now()).status)
        report = await asyncio.to_thread(io.validate_datasets, job)
    if report.unreadable is not None:
        placement = JobPlacement(job.status.cluster if job.status else None, "")
        observed = Observed(validating=f"cannot read: {report.unreadable}", placement=placement)
        await _write(rt, state, job, decide(job, observed, _now()).status)
        raise kopf.TemporaryError(f"dataset unreadable: {report.unreadable}", delay=state.poll_s)
    size = await asyncio.to_thread(io.model_params, base_uri) if base_uri else None
    clusters = rt.indexes.compute_clusters()
    return job, report_result(job, report, size, clusters)


async def _validate_in_cluster(
    rt: Runtime, state: FineTuneState, job: FineTuneJob
) -> tuple[FineTuneJob, DatasetsReport]:
    """pvc:// datasets: place the job (for good: claims are cluster-local), then run the
    validation Job there until it reports."""
    namespace = job.metadata.namespace or "default"
    views = await _views(rt, job, _jobs(rt, state, job))
    current = job.status.cluster if job.status else None
    if current is not None:  # placed for good, even while its cluster is unreachable
        placement = JobPlacement(current, f"placed in {current}")
    else:
        placement = place_job(job, list(views.values()), None)
    view = views.get(placement.cluster) if placement.cluster else None
    if view is None and current is not None:
        outcome = ClusterValidation(message=f"waiting for ComputeCluster {current}, the job's")
    elif view is None:
        message = f"waiting for a cluster to validate the pvc:// datasets in: {placement.message}"
        outcome = ClusterValidation(message=message)
    else:
        tenant = tenant_for_namespace(rt.indexes.tenants(), namespace)
        tenant_name = tenant.metadata.name if tenant else None
        outcome = await validate_in_cluster(rt, job, view, tenant_name, _now())
    if outcome.report is not None:
        return job, outcome.report
    observed = Observed(validating=outcome.message, placement=placement)
    job = await _write(rt, state, job, decide(job, observed, _now()).status)
    raise kopf.TemporaryError(outcome.message, delay=state.poll_s)


async def _views(rt: Runtime, job: FineTuneJob, jobs: list[FineTuneJob]) -> dict[str, ClusterView]:
    mds = rt.indexes.deployments()
    allocations = {c: dict(g) for c, g in gpu_allocations(mds).items()}
    for other in jobs:
        status = other.status
        res = other.spec.resources
        if other.metadata.uid == job.metadata.uid or not holds_quota(status) or not status:
            continue
        if status.cluster and res.gpu_type and res.gpus_per_worker:
            held = allocations.setdefault(status.cluster, {})
            held[res.gpu_type] = held.get(res.gpu_type, 0) + res.workers * res.gpus_per_worker
    return await rt.cluster_views(rt.indexes.compute_clusters(), allocations)


async def _step(
    rt: Runtime,
    state: FineTuneState,
    job: FineTuneJob,
    validation: ValidationResult | None,
) -> Decision:
    namespace, name = _key_of(job)
    base_uri, base_error_or_name = await base_model(rt, job)
    base_error = base_error_or_name if base_uri is None else None
    terminal = finished(job)
    current = job.status.cluster if job.status else None
    # A placed job's RayJob and progress are read before the admission lock, which every
    # job's reconcile shares: only the quota and placement decision needs it.
    rayjob: dict[str, Any] | None = None
    progress = None
    if current is not None:
        if not terminal:
            rayjob = await read_rayjob(rt, current, namespace, name, True)
        progress = await read_progress(rt, job, current, rayjob, terminal)
    async with state.admission:
        jobs = _jobs(rt, state, job)
        views = await _views(rt, job, jobs)
        placement = place_job(job, list(views.values()), current)
        cluster = current or placement.cluster
        if current is None:  # a RayJob may exist where a crash kept it out of the status
            if not terminal:
                rayjob = await read_rayjob(rt, cluster, namespace, name, False)
            progress = await read_progress(rt, job, cluster, rayjob, terminal)
        if rayjob is None and current is not None and not terminal:
            placement = _within(job, views, current)  # kept there, if it fits (again)
        tenant = tenant_for_namespace(rt.indexes.tenants(), namespace)
        deployments = rt.indexes.deployments()
        admission = admission_for(job, tenant, jobs, deployments)
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
        )
        decision = decide(job, observed, _now())
        deploy = await apply_actions(
            rt, job, decision, cluster, views, tenant, base_uri, base_error_or_name
        )
        if deploy is not None:
            decision = decide(job, dataclasses.replace(observed, deploy=deploy), _now())
        released = holds_quota(job.status) and not holds_quota(decision.status)
        adapter_new = decision.status.adapter is not None and (
            job.status is None or job.status.adapter != decision.status.adapter
        )
        await _write(rt, state, job, decision.status)
    if released:
        state.wake_all()  # a queued peer may fit now
    if adapter_new:
        rt.wake_all()  # ModelDeployments naming this job in `fineTuneJobRef` can serve it now
    return decision


def _within(job: FineTuneJob, views: Mapping[str, ClusterView], cluster: str) -> JobPlacement:
    """Placement in the job's own cluster (validated there, or resumed there), capacity checked."""
    placed = place_job(job, [views[cluster]] if cluster in views else [], None)
    if placed.cluster is None:
        return JobPlacement(None, f"{placed.message}; the job stays in {cluster}")
    return placed


async def _write(
    rt: Runtime, state: FineTuneState, job: FineTuneJob, status: FineTuneJobStatus
) -> FineTuneJob:
    """Write `status` if it differs from the job's; the job as it now is."""
    previous = job.status
    if not status_differs(previous, status):
        return job
    namespace, name = _key_of(job)
    if await rt.write_status(FINETUNEJOB, namespace, name, previous, status):
        state.statuses[(namespace, name)] = (job.metadata.uid, status)
        state.phases.set(namespace, name, status.phase)
        if previous is None or previous.phase != status.phase:
            kind = "Warning" if status.phase in ("Failed", "FailedValidation") else "Normal"
            rt.events.post(job, kind, status.phase or "Unknown", f"phase {status.phase}")
    return job.model_copy(update={"status": status})


async def cleanup(rt: Runtime, state: FineTuneState, body: Mapping[str, Any]) -> None:
    """Cancel: delete the RayJob wherever it may be; keep the finalizer until it is gone."""
    namespace, name = key = _key(body)
    await rt.indexes.synced()
    async with rt.lock(("FineTuneJob/" + namespace, name)):
        job = _parse(state, body)
        job = await _write(rt, state, job, decide(job, Observed(deleting=True), _now()).status)
        waiting = []
        for cc in rt.indexes.compute_clusters():
            member = await rt.ensure_member(cc)
            if member is None or not member.probe.reachable:
                if job.status is not None and job.status.cluster == cc.metadata.name:
                    waiting.append(f"{cc.metadata.name} (unreachable)")
                continue
            try:
                rayjob = await member.client.get(RAYJOB, namespace, name)
                if rayjob is not None and _ours(rayjob, job):
                    await member.client.delete(RAYJOB, namespace, name)
                    if await member.client.get(RAYJOB, namespace, name) is not None:
                        waiting.append(f"{cc.metadata.name} (deleting)")
            except (ApiError, Unreachable) as exc:
                waiting.append(f"{cc.metadata.name} ({exc})")
        cluster = job.status.cluster if job.status else None
        if cluster and needs_cluster_validation(job):
            await delete_validation_job(rt, job, cluster)
        if waiting:
            raise kopf.TemporaryError(f"RayJob not yet deleted in: {', '.join(waiting)}", delay=1.0)
        state.statuses.pop(key, None)
        state.wakeups.pop(key, None)
        state.phases.set(namespace, name, None)
    if holds_quota(job.status):
        state.wake_all()


def _ours(rayjob: Mapping[str, Any], job: FineTuneJob) -> bool:
    labels = (rayjob.get("metadata") or {}).get("labels") or {}
    return bool(
        labels.get(OWNER_KIND_LABEL) == "FineTuneJob"
        and labels.get(OWNER_NAME_LABEL) == job.metadata.name
    )


def _now() -> datetime:
    return datetime.now(UTC)
