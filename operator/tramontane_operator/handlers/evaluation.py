"""Evaluations: resolve -> validate the dataset -> admit -> place -> RayJob -> result -> verdict.

Reconciled by the kind's `Controller` like FineTuneJobs, in the same shape: our finalizer
first; then every read (the models from the hub caches, the RayJob and the evaluator's last
result line from its submitter pod's log in the member cluster); then one synchronous
decision (admission against the tenant's GPU quota, placement in its allowed clusters
against the one GPU ledger, the phase machine of `reconcile.evaluation`, the ledger's
entry); then the actions on the RayJob and the status write, with an Event per phase change.
While a run is not finished the Evaluation is looked at again every
`TRAMONTANE_FINETUNE_POLL_INTERVAL` seconds.

The dataset is validated before any GPU is asked for: in local mode a local file here (a
worker thread), otherwise by the FineTuneJobs' validation Job in the member cluster the run
is then placed in. Deleting an Evaluation deletes its RayJob (wherever it may be) and its
validation Job before the finalizer goes, and releases its quota. A gate Evaluation (one a
FineTuneJob's `autoDeploy.evaluation` created) wakes its job when its run ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tramontane_api.v1alpha1 import (
    Evaluation,
    EvaluationStatus,
    ModelDeployment,
    Tenant,
)
from tramontane_kube import EVALUATION, ApiError, Unreachable
from tramontane_operator.builders.evaluation_rayjob import (
    build_eval_config,
    build_eval_rayjob,
    build_eval_validation_job,
    eval_rayjob_name,
    eval_validation_job_name,
)
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.placement import ClusterView
from tramontane_operator.reconcile.admission import admission_for, created_at
from tramontane_operator.reconcile.evaluation import (
    TERMINAL,
    Decision,
    Observed,
    decide,
    finished,
    holds_quota,
    was_validated,
)
from tramontane_operator.reconcile.evaluation_inputs import (
    EvalValidation,
    Resolution,
    eval_gpus,
    eval_workload,
    resolve,
    validation_of,
)
from tramontane_operator.reconcile.finetunejob_deploy import GATE_OF_LABEL
from tramontane_operator.reconcile.finetunejob_inputs import (
    AdmissionResult,
    JobPlacement,
    place_batch,
)
from tramontane_operator.reconcile.finetunejob_progress import reads_submitter_log
from tramontane_operator.reconcile.finetunejob_trust import is_local
from tramontane_workers.contract.datasets_report import validate_files
from tramontane_workers.contract.eval_config import last_result

from .batch import BatchController, delete_rayjobs, write_phase_status
from .controller import Invalid, Key, Retry, key_of
from .finetunejob import poll_interval
from .finetunejob_children import RAYJOB, read_rayjob, submitter_log
from .finetunejob_validation import delete_dataset_job, run_dataset_job
from .parsing import parse_resource
from .runtime import (
    EVALUATIONS,
    FINETUNEJOBS,
    Runtime,
    allowed_views,
    waiting_in,
    with_allocations,
)

log = logging.getLogger(__name__)


class Evaluations(BatchController):
    """The controller of Evaluations."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, EVALUATIONS, EVALUATION, reconcile, cleanup, TERMINAL, poll_interval())


def _parse(rt: Runtime, body: Mapping[str, Any]) -> Evaluation:
    ev = parse_resource(Evaluation, body)
    fresher = rt.last_status(EVALUATIONS, body)
    if isinstance(fresher, EvaluationStatus):
        return ev.model_copy(update={"status": fresher})
    return ev


def _key(ev: Evaluation) -> Key:
    return (ev.metadata.namespace or "default", ev.metadata.name)


async def reconcile(rt: Runtime, body: Mapping[str, Any], poll_s: float) -> Decision:
    key = key_of(body)
    with reconcile_scope("Evaluation", *key) as scope:
        ev = _parse(rt, body)
        if finished(ev):  # this run is over: nothing to read, nothing held
            if rt.ledger.release(_workload_key(ev)) is not None:
                rt.wake_tenant(_key(ev)[0])
            return Decision(ev.status or EvaluationStatus())
        decision = await _step(rt, ev, poll_s)
        scope.outcome = decision.phase or "unknown"
        scope.clusters = decision.status.cluster or ""
        return decision


def _resolve(rt: Runtime, ev: Evaluation) -> Resolution:
    namespace = _key(ev)[0]
    idx = rt.indexes
    deployments = {m.metadata.name: m for m in idx.modeldeployments.parsed_in([namespace])}
    jobs = {j.metadata.name: j for j in idx.finetunejobs.parsed_in([namespace])}
    return resolve(ev, deployments, jobs, rt.settings.local_mode)


async def _views(rt: Runtime, ev: Evaluation, tenant: Tenant | None) -> dict[str, ClusterView]:
    """The clusters the tenant may use, with what the ledger holds there (but this run's)."""
    views = await rt.cluster_views(rt.indexes.compute_clusters(), {})
    held = rt.ledger.allocations(exclude=_workload_key(ev))
    return with_allocations(allowed_views(views, tenant), held)


def _workload_key(ev: Evaluation) -> str:
    namespace, name = _key(ev)
    return f"{EVALUATIONS}/{namespace}/{name}"


def _place(
    md: ModelDeployment | None, views: Mapping[str, ClusterView], current: str | None
) -> JobPlacement:
    """Where the run goes: its cluster once chosen (validated there), capacity checked; else
    where the ModelDeployment may be placed (its clusters or selector), GPUs free."""
    gpus = eval_gpus(md)
    gpu_type, count = next(iter(gpus.items()), (None, 0))
    if current is not None:
        placed = place_batch(gpu_type, count, [current], None, list(views.values()))
        if placed.cluster is None:
            return JobPlacement(None, f"{placed.message}; the evaluation stays in {current}")
        return placed
    placement = md.spec.placement if md is not None else None
    names = placement.clusters if placement is not None else None
    selector = placement.cluster_selector if placement is not None else None
    return place_batch(gpu_type, count, names, selector, list(views.values()))


def _uses_claims(ev: Evaluation, resolution: Resolution) -> bool:
    """Whether the run reads a pvc:// claim (the dataset, a base model or an adapter)."""
    uris = [ev.spec.dataset.uri]
    for model in (resolution.target, resolution.baseline):
        if model is not None:
            uris += [model.base_model_uri, model.adapter_uri or ""]
    return any(uri.startswith("pvc://") for uri in uris)


async def _step(rt: Runtime, ev: Evaluation, poll_s: float) -> Decision:
    namespace, _ = _key(ev)
    tenant = rt.indexes.tenant_object(namespace)
    resolution = _resolve(rt, ev)
    md = resolution.model_deployment
    # Every read first.
    views = await _views(rt, ev, tenant)
    current = ev.status.cluster if ev.status else None
    rayjob, result = None, None
    rayjob_name = eval_rayjob_name(ev)
    if current is not None:
        held = holds_quota(ev.status)
        rayjob = await read_rayjob(rt, current, namespace, rayjob_name, held)
        if rayjob is not None and reads_submitter_log(rayjob, None):
            text = await submitter_log(rt, current, namespace, rayjob_name)
            result = last_result(text) if text else None
    validation, validating, placement = None, None, None
    ready = resolution.target is not None and rayjob is None
    # Claims are cluster-local: a run reading one stays where it was validated.
    pinned = current if _uses_claims(ev, resolution) else None
    if ready and not was_validated(ev):
        validation, validating, placement = await _validate(rt, ev, md, views, tenant, pinned)
        views = await _views(rt, ev, tenant)  # as they are after the validation's I/O
    # The decision: no `await` from here to the ledger's update.
    valid = was_validated(ev) or (validation is not None and validation.ok)
    if ready and valid:
        if placement is not None and placement.cluster and _uses_claims(ev, resolution):
            pinned = placement.cluster
        placement = _place(md, views, pinned)
    now = _now()
    observed = Observed(
        resolution=resolution,
        validation=validation,
        validating=validating,
        admission=_admission(rt, ev, md, tenant) if ready else None,
        placement=placement,
        rayjob=rayjob,
        result=result,
    )
    decision = decide(ev, observed, now)
    released = _account(rt, ev, md, decision.status)
    # Then the writes.
    await _apply(rt, ev, decision, current, views, tenant, resolution)
    await _write(rt, ev, decision.status)
    if released:
        rt.wake_tenant(namespace)
    if decision.actions == ("validate",) and validating and validating.startswith("cannot read"):
        raise Retry(validating, poll_s)
    return decision


async def _validate(
    rt: Runtime,
    ev: Evaluation,
    md: ModelDeployment | None,
    views: Mapping[str, ClusterView],
    tenant: Tenant | None,
    current: str | None,
) -> tuple[EvalValidation | None, str | None, JobPlacement | None]:
    """(the validation, or how it goes, and where) of the dataset: here in local mode for a
    local file, else by a validation Job in the cluster the run is then placed in."""
    uri = ev.spec.dataset.uri
    if is_local(uri) and rt.settings.local_mode:
        report = await asyncio.to_thread(validate_files, [uri], [], evaluation=True)
        found = validation_of(report)
        return found, None if found else f"cannot read: {report.unreadable}", None
    placement = _place(md, views, current)
    view = views.get(placement.cluster) if placement.cluster else None
    if view is None:
        return None, f"waiting for a cluster to validate the dataset in: {placement.message}", None
    tenant_name = tenant.metadata.name if tenant else None
    outcome = await run_dataset_job(
        rt,
        ev,
        eval_validation_job_name(ev),
        lambda: build_eval_validation_job(ev, view, rt.build, tenant_name),
        view,
        _now(),
    )
    if outcome.report is None:
        return None, outcome.message, placement
    return validation_of(outcome.report), outcome.message, placement


def _admission(
    rt: Runtime, ev: Evaluation, md: ModelDeployment | None, tenant: Tenant | None
) -> AdmissionResult:
    key = _workload_key(ev)
    if tenant is None or key in rt.ledger:
        return AdmissionResult(admitted=True)
    namespaces = tenant.spec.namespaces
    held = rt.ledger.held_in(namespaces)
    others = waiting_in(rt.indexes, namespaces, held)
    workload = eval_workload(ev, md, created_at(ev), admitted=False)
    return admission_for(workload, tenant, held, others)


def _account(
    rt: Runtime, ev: Evaluation, md: ModelDeployment | None, status: EvaluationStatus
) -> bool:
    """Hold the run's GPUs while its new status holds them; whether they were released."""
    if holds_quota(status) and status.cluster:
        rt.ledger.hold(eval_workload(ev, md, created_at(ev), True, status.cluster))
        return False
    return rt.ledger.release(_workload_key(ev)) is not None


async def _apply(
    rt: Runtime,
    ev: Evaluation,
    decision: Decision,
    observed_in: str | None,
    views: Mapping[str, ClusterView],
    tenant: Tenant | None,
    resolution: Resolution,
) -> None:
    namespace, _ = _key(ev)
    rayjob_name = eval_rayjob_name(ev)
    for action in decision.actions:
        target = decision.status.cluster if action == "create_rayjob" else observed_in
        member = rt.clusters.get(target) if target else None
        if member is None:
            continue
        try:
            if action == "create_rayjob" and target is not None and target in views:
                md, model = resolution.model_deployment, resolution.target
                if md is None or model is None:
                    continue
                config = build_eval_config(ev, model, resolution.baseline, md)
                tenant_name = tenant.metadata.name if tenant else None
                desired = build_eval_rayjob(ev, config, md, views[target], rt.build, tenant_name)
                await member.ensure_namespace(namespace)
                await member.client.apply(RAYJOB, desired, None)
                rt.events.post(ev, "Normal", "Started", f"RayJob {rayjob_name} created in {target}")
            elif action in ("replace_rayjob", "delete_rayjob"):
                await member.client.delete(RAYJOB, namespace, rayjob_name)
        except ValueError as exc:  # the spec cannot be run as given (a bad claim name)
            rt.events.post(ev, "Warning", "InvalidSpec", str(exc))
            raise Invalid(str(exc)) from exc
        except ApiError as exc:
            if exc.status == 422:
                rt.events.post(ev, "Warning", "InvalidSpec", f"{action}: {exc}")
                raise Invalid(f"{action}: {exc}") from exc
            raise Retry(f"{action}: {exc}") from exc
        except Unreachable as exc:
            raise Retry(f"{action}: {exc}") from exc


async def _write(rt: Runtime, ev: Evaluation, status: EvaluationStatus) -> Evaluation:
    """Write `status` if it differs; an Event when the phase changed; wake a gate's job."""
    if await write_phase_status(rt, EVALUATIONS, EVALUATION, ev, _key(ev), status):
        _phase_event(rt, ev, status)
        gate_of = (ev.metadata.labels or {}).get(GATE_OF_LABEL)
        if gate_of and status.phase in TERMINAL:
            rt.wake(FINETUNEJOBS, (_key(ev)[0], gate_of))
    return ev.model_copy(update={"status": status})


def _phase_event(rt: Runtime, ev: Evaluation, status: EvaluationStatus) -> None:
    message = status.message or f"phase {status.phase}"
    if status.phase == "Passed":
        rt.events.post(ev, "Normal", "Passed", message)
    elif status.phase == "Failed":
        rt.events.post(ev, "Warning", "Failed", message)
    elif status.phase == "Error":
        rt.events.post(ev, "Warning", "Error", message)
    elif status.phase == "Queued":
        rt.events.post(ev, "Normal", "Queued", message)


async def cleanup(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Delete the RayJob wherever it may be, and the validation Job; `Retry` until gone."""
    namespace, _ = key_of(body)
    ev = _parse(rt, body)
    rayjob_name = eval_rayjob_name(ev)

    placed = ev.status.cluster if ev.status else None
    waiting_on = await delete_rayjobs(
        rt, "Evaluation", ev.metadata.name, namespace, rayjob_name, placed
    )
    cluster = ev.status.cluster if ev.status else None
    if cluster:
        await delete_dataset_job(rt, ev, eval_validation_job_name(ev), cluster)
    if waiting_on:
        raise Retry(f"RayJob not yet deleted in: {', '.join(waiting_on)}")


def _now() -> datetime:
    return datetime.now(UTC)
