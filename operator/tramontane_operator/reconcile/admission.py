"""Admission of both kinds against the tenant's quota, from the one ledger.

Pure. A ModelDeployment or FineTuneJob is reduced to a `quotas.Workload`: a ModelDeployment
counts `maxReplicas x gpu.count` of its GPU type and one of `maxModelDeployments`; a
FineTuneJob `workers x gpusPerWorker` and one of `maxConcurrentFineTuneJobs`. What holds
quota is what the ledger holds (`quotas.ledger`); what waits is every workload of the tenant
that wants to run and is not in the ledger. `admission_for` runs Kueue's BestEffortFIFO
round over both (priority, then age) and says whether the candidate is admitted now, or its
queue position and the limit that holds it back.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from tramontane_api.v1alpha1 import Evaluation, FineTuneJob, ModelDeployment, Tenant
from tramontane_operator.placement import pool_gpus
from tramontane_operator.quotas import (
    Workload,
    admit,
    workload_of_fine_tune_job,
    workload_of_model_deployment,
)

from .conditions import find
from .finetunejob import ADMITTED, FtjReason, finished, holds_quota, was_validated
from .finetunejob_inputs import AdmissionResult

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_CLUSTER = FtjReason.NO_ELIGIBLE_CLUSTER


def created_at(obj: FineTuneJob | ModelDeployment | Evaluation) -> datetime:
    """metadata.creationTimestamp (the epoch when absent: oldest first, deterministically)."""
    meta_created = (obj.metadata.model_extra or {}).get("creationTimestamp")
    if isinstance(meta_created, datetime):
        return meta_created
    if isinstance(meta_created, str):
        return _parse_time(meta_created)
    return _EPOCH


@functools.lru_cache(maxsize=65536)
def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH


def job_workload(job: FineTuneJob, cluster: str | None = None) -> Workload:
    """The job as quotas count it; `cluster`: where it holds its GPUs (admitted, placed)."""
    status = job.status
    cluster = cluster or (status.cluster if status and holds_quota(status) else None)
    return workload_of_fine_tune_job(
        job, created_at(job), admitted=holds_quota(status), cluster=cluster
    )


def md_admitted(md: ModelDeployment) -> bool:
    """Whether the deployment's status says it was admitted (anything past Queued)."""
    status = md.status
    return status is not None and status.phase is not None and status.phase != "Queued"


def admitted_md_workload(md: ModelDeployment) -> Workload:
    """The deployment as its status says it was admitted (`quotaGpus` when a cap held it
    below its spec): what a restart rebuilds the ledger from."""
    workload = md_workload(md)
    quota = md.status.quota_gpus if md.status is not None else None
    if quota is None or not workload.gpus:
        return workload
    gpus = {t: min(n, quota) for t, n in workload.gpus.items()}
    return dataclasses.replace(workload, gpus=gpus)


def md_workload(md: ModelDeployment, replicas: dict[str, int] | None = None) -> Workload:
    """The deployment as quotas count it; `replicas`: its pools per cluster (default: as its
    status says)."""
    if replicas is None:
        pools = (md.status.clusters if md.status is not None else None) or []
        replicas = {p.name: p.desired_replicas for p in pools}
    return workload_of_model_deployment(
        md, created_at(md), admitted=md_admitted(md), clusters=pool_gpus(md, replicas)
    )


def job_queues(job: FineTuneJob) -> bool:
    """Whether the job waits for admission now (validated and wanting to run)."""
    return (
        was_validated(job.status)
        and not job.spec.suspend
        and not job.spec.dry_run
        and not finished(job)
    )


def unplaceable(job: FineTuneJob) -> bool:
    """Whether the job's last decision found its quota but no cluster: it holds no place in
    its tenant's queue (BestEffortFIFO: what cannot run does not hold back what can)."""
    cond = find(job.status.conditions if job.status else None, ADMITTED)
    return cond is not None and cond.status == "False" and cond.reason == NO_CLUSTER


def waiting(
    namespaces: Iterable[str],
    jobs: Iterable[FineTuneJob],
    deployments: Iterable[ModelDeployment],
    held: Iterable[str],
) -> list[Workload]:
    """The workloads in `namespaces` that want to run and hold nothing (`held`: the keys the
    ledger holds)."""
    owned, holding = set(namespaces), set(held)
    out = [
        md_workload(md)
        for md in deployments
        if (md.metadata.namespace or "") in owned and not _deleting(md)
    ]
    out += [
        job_workload(j)
        for j in jobs
        if (j.metadata.namespace or "") in owned and job_queues(j) and not unplaceable(j)
    ]
    return [w for w in out if w.key not in holding]


def _deleting(obj: ModelDeployment | FineTuneJob) -> bool:
    return bool((obj.metadata.model_extra or {}).get("deletionTimestamp"))


def admission_for(
    candidate: Workload,
    tenant: Tenant | None,
    held: Sequence[Workload],
    others: Sequence[Workload],
) -> AdmissionResult:
    """Whether `candidate` may hold quota now, given what the tenant's workloads hold (`held`)
    and the others waiting (`others`); no tenant: no quota to check."""
    holding = {w.key for w in held}
    if tenant is None or candidate.key in holding:
        return AdmissionResult(admitted=True)
    workloads = [dataclasses.replace(w, admitted=True) for w in held]
    skip = holding | {candidate.key}
    workloads += [_waiting(w) for w in others if w.key not in skip]
    workloads.append(_waiting(candidate))
    result = admit(tenant.spec.quotas, workloads)
    if candidate.key in result.admitted:
        return AdmissionResult(admitted=True)
    return AdmissionResult(
        False, result.queued.get(candidate.key), result.reasons.get(candidate.key, "queued")
    )


def admissible_now(
    tenant: Tenant, held: Sequence[Workload], others: Sequence[Workload]
) -> tuple[str, ...]:
    """The keys of the waiting workloads (`others`) one admission round of the tenant admits
    next to what it holds (`held`): the ones a release should wake first."""
    holding = {w.key for w in held}
    workloads = [dataclasses.replace(w, admitted=True) for w in held]
    workloads += [_waiting(w) for w in others if w.key not in holding]
    return admit(tenant.spec.quotas, workloads).admitted


def replicas_within_quota(
    md: ModelDeployment, tenant: Tenant | None, held: Sequence[Workload]
) -> int | None:
    """An admitted deployment whose `maxReplicas` grew past what its tenant's quota has room
    for keeps serving, capped: the most replicas its GPUs may reach next to what the tenant's
    other workloads hold (`held`: the ledger's entries in its namespaces, its own included);
    None when nothing caps it. Quota is checked at admission, and again on growth."""
    gpu = md.spec.resources.gpu
    limit = (tenant.spec.quotas.gpus or {}).get(gpu.type) if tenant and gpu and gpu.count else None
    if limit is None or gpu is None:
        return None
    own = md_workload(md).key
    others = sum(w.gpus.get(gpu.type, 0) for w in held if w.key != own)
    before = sum(w.gpus.get(gpu.type, 0) for w in held if w.key == own) // gpu.count
    # What it was admitted with stays (a quota lowered later is reported, not enforced).
    allowed = max(max(limit - others, 0) // gpu.count, before)
    return allowed if md.spec.scaling.max_replicas > allowed else None


def capped(md: ModelDeployment, max_replicas: int) -> ModelDeployment:
    """`md` with at most `max_replicas` replicas (its spec as the quota lets it run)."""
    scaling = md.spec.scaling
    replicas = None if scaling.replicas is None else min(scaling.replicas, max_replicas)
    bounded = scaling.model_copy(
        update={
            "max_replicas": max_replicas,
            "min_replicas": min(scaling.min_replicas, max_replicas),
            "replicas": replicas,
        }
    )
    return md.model_copy(update={"spec": md.spec.model_copy(update={"scaling": bounded})})


def _waiting(w: Workload) -> Workload:
    return dataclasses.replace(w, admitted=False) if w.admitted else w
