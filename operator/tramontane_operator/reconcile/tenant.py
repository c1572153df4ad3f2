"""Tenant status from its workloads: usage per GPU type and cluster, Ready, OverQuota.

Pure: the runtime gathers the tenant's workloads (`quotas.Workload`) and the other tenants
(for namespace conflicts) and writes what `compute_tenant_status` returns when
`status_differs` says it changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

from tramontane_api.v1alpha1 import Tenant, TenantStatus
from tramontane_api.v1alpha1.tenant import (
    ClusterUsage,
    TenantPhase,
    TenantUsage,
    namespace_conflicts,
)
from tramontane_operator.quotas import Workload, over_quota, usage

from .conditions import READY, ConditionSpec, merge_conditions

WITHIN_QUOTA: Final = "WithinQuota"
OVER_QUOTA_REASON: Final = "OverQuota"
NAMESPACE_CONFLICT: Final = "NamespaceConflict"
QUOTA_CONDITION: Final = "WithinQuota"


def compute_tenant_status(
    tenant: Tenant,
    workloads: Iterable[Workload],
    all_tenants: Sequence[Tenant],
    now: datetime,
) -> TenantStatus:
    """The status of `tenant`: usage of its admitted workloads and its conditions."""
    current = usage(workloads)
    quotas = tenant.spec.quotas
    exceeded = over_quota(quotas, current)
    conflicts = {
        ns: names
        for ns, names in namespace_conflicts(all_tenants).items()
        if tenant.metadata.name in names
    }

    phase: TenantPhase
    if conflicts:
        detail = "; ".join(
            f"{ns} also claimed by {', '.join(n for n in names if n != tenant.metadata.name)}"
            for ns, names in conflicts.items()
        )
        ready = ConditionSpec(READY, "False", NAMESPACE_CONFLICT, detail)
        phase = "Invalid"
    elif exceeded:
        ready = ConditionSpec(READY, "True", OVER_QUOTA_REASON, "; ".join(exceeded))
        phase = "OverQuota"
    else:
        ready = ConditionSpec(READY, "True", WITHIN_QUOTA, "usage within every quota")
        phase = "Active"
    quota = (
        ConditionSpec(QUOTA_CONDITION, "False", OVER_QUOTA_REASON, "; ".join(exceeded))
        if exceeded
        else ConditionSpec(QUOTA_CONDITION, "True", WITHIN_QUOTA, "")
    )
    previous = tenant.status.conditions if tenant.status else None
    return TenantStatus(
        phase=phase,
        observed_generation=tenant.metadata.generation,
        conditions=merge_conditions([ready, quota], previous, now, tenant.metadata.generation),
        usage=TenantUsage(
            gpus=dict(current.gpus),
            per_cluster=[
                ClusterUsage(cluster=name, gpus=dict(gpus))
                for name, gpus in current.per_cluster.items()
            ]
            or None,
            fine_tune_jobs=current.fine_tune_jobs,
            model_deployments=current.model_deployments,
        ),
        gpus_in_use=current.total_gpus,
        # The routers own the token budget's status: carried over, never cleared here.
        token_budget=tenant.status.token_budget if tenant.status else None,
    )
