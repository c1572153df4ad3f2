"""A tenant's workloads as quotas count them, and the admission of one FineTuneJob.

Pure. ModelDeployments count as admitted (they run while they exist) with their GPUs per
cluster from their status; a FineTuneJob holds quota while admitted and active
(`holds_quota`); only validated, unsuspended, unfinished, non-dry-run jobs queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment, Tenant
from tramontane_operator.quotas import (
    Workload,
    admit,
    workload_of_fine_tune_job,
    workload_of_model_deployment,
)

from .finetunejob import finished, holds_quota, was_validated
from .finetunejob_inputs import AdmissionResult

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def created_at(obj: FineTuneJob | ModelDeployment) -> datetime:
    """metadata.creationTimestamp (the epoch when absent: oldest first, deterministically)."""
    meta_created = (obj.metadata.model_extra or {}).get("creationTimestamp")
    if isinstance(meta_created, datetime):
        return meta_created
    if isinstance(meta_created, str):
        try:
            return datetime.fromisoformat(meta_created.replace("Z", "+00:00"))
        except ValueError:
            return _EPOCH
    return _EPOCH


def job_workload(job: FineTuneJob) -> Workload:
    status = job.status
    return workload_of_fine_tune_job(
        job,
        created_at(job),
        admitted=holds_quota(status),
        cluster=status.cluster if status else None,
    )


def deployment_workload(md: ModelDeployment) -> Workload:
    gpu = md.spec.resources.gpu
    per_cluster: dict[str, dict[str, int]] = {}
    if gpu is not None and gpu.count and md.status is not None:
        for pool in md.status.clusters or []:
            per_cluster[pool.name] = {gpu.type: pool.desired_replicas * gpu.count}
    return workload_of_model_deployment(md, created_at(md), admitted=True, clusters=per_cluster)


def queues(job: FineTuneJob) -> bool:
    """Whether the job waits for admission now (validated and wanting to run)."""
    status = job.status
    return (
        was_validated(status)
        and not job.spec.suspend
        and not job.spec.dry_run
        and not finished(job)
    )


def tenant_workloads(
    tenant: Tenant, jobs: Iterable[FineTuneJob], deployments: Iterable[ModelDeployment]
) -> list[Workload]:
    """The workloads in the tenant's namespaces that hold quota or queue for it."""
    owned = set(tenant.spec.namespaces)
    out = [deployment_workload(md) for md in deployments if (md.metadata.namespace or "") in owned]
    out += [
        job_workload(j)
        for j in jobs
        if (j.metadata.namespace or "") in owned and (holds_quota(j.status) or queues(j))
    ]
    return out


def admission_for(
    job: FineTuneJob,
    tenant: Tenant | None,
    others: Sequence[FineTuneJob],
    deployments: Sequence[ModelDeployment],
) -> AdmissionResult:
    """Whether `job` may run now under its tenant's quota (no tenant: no quota to check)."""
    if tenant is None or holds_quota(job.status):
        return AdmissionResult(admitted=True)
    key = job_workload(job).key
    peers = [o for o in others if job_workload(o).key != key]
    workloads = tenant_workloads(tenant, peers, deployments)
    workloads.append(job_workload(job))
    result = admit(tenant.spec.quotas, workloads)
    if key in result.admitted:
        return AdmissionResult(admitted=True)
    return AdmissionResult(False, result.queued.get(key), result.reasons.get(key, "queued"))
