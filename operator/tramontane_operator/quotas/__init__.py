"""Tenant quotas: which tenant owns a namespace, what a tenant uses, and who may run now.

Pure decision logic, no I/O. A *workload* is a ModelDeployment or a FineTuneJob reduced to what
quotas count: GPUs per GPU type, its kind, priority and age. `admit` orders a tenant's pending
workloads like Kueue's BestEffortFIFO queue with priorities (higher priority first, then
older first) and admits each one that fits in what the quota has left; the others are queued
with a 1-based position and a reason naming the limit they hit.

What counts against the quota: a FineTuneJob reserves `workers x gpusPerWorker` GPUs of its
`gpuType` while admitted; a ModelDeployment reserves `maxReplicas x gpu.count` (it may scale
up to that at any moment, so the quota must hold then, not only now).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment, Tenant
from tramontane_api.v1alpha1.tenant import Quotas

# Evaluations count GPUs only (neither maxModelDeployments nor maxConcurrentFineTuneJobs).
WorkloadKind = Literal["ModelDeployment", "FineTuneJob", "Evaluation"]


@dataclass(frozen=True)
class Workload:
    """What quotas count of one ModelDeployment, FineTuneJob or Evaluation."""

    kind: WorkloadKind
    namespace: str
    name: str
    created: datetime
    gpus: Mapping[str, int] = field(default_factory=dict)
    priority: int = 0
    admitted: bool = False
    # GPUs per cluster once placed (cluster -> GPU type -> count), for usage reporting.
    clusters: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def workload_of_model_deployment(
    md: ModelDeployment,
    created: datetime,
    admitted: bool = False,
    clusters: Mapping[str, Mapping[str, int]] | None = None,
) -> Workload:
    gpu = md.spec.resources.gpu
    gpus = {gpu.type: md.spec.scaling.max_replicas * gpu.count} if gpu and gpu.count else {}
    return Workload(
        kind="ModelDeployment",
        namespace=md.metadata.namespace or "default",
        name=md.metadata.name,
        created=created,
        gpus=gpus,
        priority=md.spec.priority,
        admitted=admitted,
        clusters=dict(clusters or {}),
    )


def workload_of_fine_tune_job(
    job: FineTuneJob,
    created: datetime,
    admitted: bool = False,
    cluster: str | None = None,
) -> Workload:
    res = job.spec.resources
    total = res.workers * res.gpus_per_worker
    gpus = {res.gpu_type: total} if res.gpu_type and total else {}
    return Workload(
        kind="FineTuneJob",
        namespace=job.metadata.namespace or "default",
        name=job.metadata.name,
        created=created,
        gpus=gpus,
        priority=job.spec.priority,
        admitted=admitted,
        clusters={cluster: gpus} if cluster and admitted else {},
    )


def tenant_for_namespace(tenants: Iterable[Tenant], namespace: str) -> Tenant | None:
    """The tenant owning `namespace`; with a conflict, the first by name (and reported by
    `namespace_conflicts`), so the answer is stable."""
    owners = sorted(
        (t for t in tenants if namespace in t.spec.namespaces), key=lambda t: t.metadata.name
    )
    return owners[0] if owners else None


@dataclass(frozen=True)
class Usage:
    """What a tenant's admitted workloads hold."""

    gpus: Mapping[str, int] = field(default_factory=dict)
    per_cluster: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    fine_tune_jobs: int = 0
    model_deployments: int = 0

    @property
    def total_gpus(self) -> int:
        return sum(self.gpus.values())


def usage(workloads: Iterable[Workload]) -> Usage:
    gpus: Counter[str] = Counter()
    per_cluster: dict[str, Counter[str]] = {}
    counts: Counter[str] = Counter()
    for w in workloads:
        if not w.admitted:
            continue
        gpus.update(w.gpus)
        counts[w.kind] += 1
        for cluster, cluster_gpus in w.clusters.items():
            per_cluster.setdefault(cluster, Counter()).update(cluster_gpus)
    return Usage(
        gpus=dict(sorted(gpus.items())),
        per_cluster={c: dict(sorted(g.items())) for c, g in sorted(per_cluster.items())},
        fine_tune_jobs=counts["FineTuneJob"],
        model_deployments=counts["ModelDeployment"],
    )


def blocking_limit(quotas: Quotas, current: Usage, workload: Workload) -> str | None:
    """Why `workload` does not fit next to `current` usage, or None when it fits."""
    for gpu_type, wanted in sorted(workload.gpus.items()):
        limit = (quotas.gpus or {}).get(gpu_type)
        if limit is not None and current.gpus.get(gpu_type, 0) + wanted > limit:
            used = current.gpus.get(gpu_type, 0)
            return f"quota gpus.{gpu_type}: needs {wanted}, {used} of {limit} in use"
    if workload.kind == "FineTuneJob":
        limit = quotas.max_concurrent_fine_tune_jobs
        if limit is not None and current.fine_tune_jobs + 1 > limit:
            return f"quota maxConcurrentFineTuneJobs: {current.fine_tune_jobs} of {limit} running"
    elif workload.kind == "ModelDeployment":
        limit = quotas.max_model_deployments
        if limit is not None and current.model_deployments + 1 > limit:
            return f"quota maxModelDeployments: {current.model_deployments} of {limit} in use"
    return None


@dataclass(frozen=True)
class Admission:
    """The outcome of one admission round for a tenant."""

    admitted: tuple[str, ...]  # keys newly admitted, in admission order
    queued: Mapping[str, int]  # key -> 1-based queue position
    reasons: Mapping[str, str]  # key -> the limit that holds it back
    usage: Usage  # usage after the newly admitted ones


def queue_order(workloads: Iterable[Workload]) -> list[Workload]:
    """Higher priority first, then older first; the key breaks ties deterministically."""
    return sorted(workloads, key=lambda w: (-w.priority, w.created, w.key))


def admit(quotas: Quotas, workloads: Sequence[Workload]) -> Admission:
    """Admit what fits, in queue order (BestEffortFIFO: a small workload may pass a large one
    that does not fit); the rest are queued."""
    current = usage(workloads)
    admitted: list[str] = []
    queued: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for w in queue_order(w for w in workloads if not w.admitted):
        reason = blocking_limit(quotas, current, w)
        if reason is None:
            admitted.append(w.key)
            current = _plus(current, w)
        else:
            queued[w.key] = len(queued) + 1
            reasons[w.key] = reason
    return Admission(tuple(admitted), queued, reasons, current)


def _plus(current: Usage, w: Workload) -> Usage:
    """`current` plus one newly admitted workload (not yet placed on any cluster)."""
    gpus = Counter(current.gpus)
    gpus.update(w.gpus)
    return Usage(
        gpus=dict(sorted(gpus.items())),
        per_cluster=current.per_cluster,
        fine_tune_jobs=current.fine_tune_jobs + (w.kind == "FineTuneJob"),
        model_deployments=current.model_deployments + (w.kind == "ModelDeployment"),
    )


def over_quota(quotas: Quotas, current: Usage) -> list[str]:
    """Limits that current usage exceeds (after a quota was lowered), in words."""
    out = [
        f"gpus.{gpu_type}: {used} in use, quota {limit}"
        for gpu_type, used in sorted(current.gpus.items())
        if (limit := (quotas.gpus or {}).get(gpu_type)) is not None and used > limit
    ]
    if (
        quotas.max_concurrent_fine_tune_jobs is not None
        and current.fine_tune_jobs > quotas.max_concurrent_fine_tune_jobs
    ):
        out.append(
            f"maxConcurrentFineTuneJobs: {current.fine_tune_jobs} running, "
            f"quota {quotas.max_concurrent_fine_tune_jobs}"
        )
    if (
        quotas.max_model_deployments is not None
        and current.model_deployments > quotas.max_model_deployments
    ):
        out.append(
            f"maxModelDeployments: {current.model_deployments} in use, "
            f"quota {quotas.max_model_deployments}"
        )
    return out
