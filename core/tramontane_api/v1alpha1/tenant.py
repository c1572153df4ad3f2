"""Tenant: a team inside the company, with its namespaces, quotas and API keys.

Cluster-scoped. The operator admits ModelDeployments and FineTuneJobs in a tenant's
namespaces against its quotas; the router authenticates requests with the tenant's API keys
and enforces its request and token rates.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import (
    AGE_COLUMN,
    LIST_SET,
    PHASE_COLUMN,
    READY_COLUMN,
    ApiModel,
    Conditions,
    DnsLabel,
    GpuType,
    KindInfo,
    PrinterColumn,
    Resource,
    SecretKeyReference,
    list_map,
)

NonNegative = Annotated[int, Field(ge=0)]


class Quotas(ApiModel):
    """Limits for the whole tenant; an omitted limit means unlimited."""

    gpus: Annotated[dict[GpuType, NonNegative], Field(max_length=64)] | None = Field(
        default=None, description="GPUs per GPU type, across all clusters."
    )
    max_concurrent_fine_tune_jobs: NonNegative | None = None
    max_model_deployments: NonNegative | None = None
    requests_per_minute: NonNegative | None = Field(
        default=None,
        description="Requests admitted in any 60-second window, across every router replica.",
    )
    tokens_per_minute: NonNegative | None = Field(
        default=None,
        description="Prompt plus completion tokens admitted in any 60-second window, across "
        "every router replica.",
    )
    max_concurrent_requests: NonNegative | None = Field(
        default=None, description="Requests in flight at once, across every router replica."
    )
    tokens_per_day: NonNegative | None = Field(
        default=None, description="Prompt plus completion tokens per UTC calendar day."
    )
    tokens_per_month: NonNegative | None = Field(
        default=None, description="Prompt plus completion tokens per UTC calendar month."
    )


class ApiKeySecretRef(SecretKeyReference):
    key: Annotated[str, Field(min_length=1)] = "api-key"


class TenantSpec(ApiModel):
    display_name: Annotated[str, Field(max_length=256)] | None = None
    namespaces: Annotated[list[DnsLabel], Field(min_length=1, json_schema_extra=LIST_SET)] = Field(
        description="Namespaces this tenant owns; a namespace belongs to one tenant."
    )
    quotas: Quotas = Field(default_factory=Quotas)
    fair_share_weight: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=1.0, description="Share of contended GPUs relative to other tenants."
    )
    allowed_clusters: Annotated[list[DnsLabel], Field(json_schema_extra=LIST_SET)] | None = Field(
        default=None, description="ComputeClusters this tenant may use; all if omitted."
    )
    api_key_secret_refs: (
        Annotated[list[ApiKeySecretRef], Field(json_schema_extra=list_map("namespace", "name"))]
        | None
    ) = None


TenantPhase = Literal["Active", "OverQuota", "Invalid"]


class ClusterUsage(ApiModel):
    cluster: str
    gpus: dict[str, int] | None = None


class TenantUsage(ApiModel):
    gpus: dict[str, int] | None = None
    per_cluster: (
        Annotated[list[ClusterUsage], Field(json_schema_extra=list_map("cluster"))] | None
    ) = None
    fine_tune_jobs: int | None = None
    model_deployments: int | None = None


class TokenBudgetStatus(ApiModel):
    """Tokens served against tokensPerDay / tokensPerMonth, written by the routers (the
    operator carries it over untouched)."""

    day: str = Field(description="The UTC day counted, YYYY-MM-DD.")
    tokens_today: int = 0
    remaining_today: int | None = Field(default=None, description="Absent without a daily budget.")
    month: str = Field(description="The UTC month counted, YYYY-MM.")
    tokens_this_month: int = 0
    remaining_this_month: int | None = Field(
        default=None, description="Absent without a monthly budget."
    )
    updated_time: datetime | None = None


class TenantStatus(ApiModel):
    phase: TenantPhase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    usage: TenantUsage | None = None
    gpus_in_use: int | None = Field(default=None, description="All GPU types, for display.")
    token_budget: TokenBudgetStatus | None = None


class Tenant(Resource):
    """A team: namespaces, quotas, fair share, allowed clusters and API keys."""

    KIND_INFO: ClassVar[KindInfo] = KindInfo(
        kind="Tenant",
        plural="tenants",
        singular="tenant",
        scope="Cluster",
        printer_columns=(
            READY_COLUMN,
            PHASE_COLUMN,
            PrinterColumn("GPUs", "integer", ".status.gpusInUse", "GPUs in use"),
            PrinterColumn("Weight", "number", ".spec.fairShareWeight", priority=1),
            AGE_COLUMN,
        ),
    )

    kind: Literal["Tenant"] = "Tenant"
    spec: TenantSpec
    status: TenantStatus | None = None


def namespace_conflicts(tenants: Iterable[Tenant]) -> dict[str, list[str]]:
    """Namespaces claimed by more than one tenant -> the tenants' names, sorted."""
    claims: dict[str, list[str]] = {}
    for tenant in tenants:
        for namespace in tenant.spec.namespaces:
            claims.setdefault(namespace, []).append(tenant.metadata.name)
    return {ns: sorted(names) for ns, names in sorted(claims.items()) if len(names) > 1}
