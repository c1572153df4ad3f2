"""Condition types, typed reasons, the merge that keeps `lastTransitionTime` stable, and the
status comparison that decides whether a status needs writing.

A condition's `lastTransitionTime` changes only when its `status` changes; reason and message
may change in place (the Kubernetes API conventions for metav1.Condition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel

from tramontane_api.v1alpha1 import Condition
from tramontane_operator import placement

Status = Literal["True", "False", "Unknown"]

# ModelDeployment condition types.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
PLACED: Final = "Placed"
MODELDEPLOYMENT_CONDITIONS: Final = (READY, PROGRESSING, DEGRADED, PLACED)

# ComputeCluster condition types.
REACHABLE: Final = "Reachable"
KUBERAY_INSTALLED: Final = "KubeRayInstalled"
COMPUTECLUSTER_CONDITIONS: Final = (READY, REACHABLE, KUBERAY_INSTALLED)


class Reason:
    """Every condition reason the operator writes (CamelCase, as the API requires)."""

    # Placed: the placement decision's reason, or InvalidSpec.
    PLACED: Final = placement.REASON_PLACED
    FAILED_OVER: Final = placement.REASON_FAILOVER
    INSUFFICIENT_CAPACITY: Final = placement.REASON_INSUFFICIENT_CAPACITY
    NO_ELIGIBLE_CLUSTER: Final = placement.REASON_NO_ELIGIBLE_CLUSTER
    NO_FAILOVER_TARGET: Final = placement.REASON_NO_FAILOVER_TARGET
    PINNED_CLUSTER_MISSING: Final = placement.REASON_PINNED_CLUSTER_MISSING
    INVALID_SPEC: Final = "InvalidSpec"
    QUOTA_EXCEEDED: Final = "QuotaExceeded"  # queued: the tenant's quota holds it back
    # Ready.
    POOLS_READY: Final = "PoolsReady"
    POOLS_NOT_READY: Final = "PoolsNotReady"
    NOT_PLACED: Final = "NotPlaced"
    QUEUED: Final = "Queued"
    # Progressing.
    CREATING: Final = "Creating"
    DEPLOYING: Final = "Deploying"
    UPGRADING: Final = "Upgrading"
    UPDATING: Final = "Updating"
    ADAPTERS_PENDING: Final = "AdaptersPending"
    STABLE: Final = "Stable"
    # Degraded.
    HEALTHY: Final = "Healthy"
    CLUSTER_UNREACHABLE: Final = "ClusterUnreachable"
    POOL_FAILED: Final = "PoolFailed"
    # ComputeCluster.
    REACHABLE: Final = "Reachable"
    UNREACHABLE: Final = "Unreachable"
    KUBERAY_FOUND: Final = "CRDsFound"
    KUBERAY_MISSING: Final = "CRDsMissing"
    NOT_PROBED: Final = "NotProbed"
    CLUSTER_READY: Final = "ClusterReady"
    CORDONED: Final = "Cordoned"


@dataclass(frozen=True)
class ConditionSpec:
    """A condition as computed, before `lastTransitionTime` is decided."""

    type: str
    status: Status
    reason: str
    message: str = ""


def merge_conditions(
    computed: Sequence[ConditionSpec],
    previous: Sequence[Condition] | None,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Conditions in `computed` order; a condition whose status did not change keeps its
    previous `lastTransitionTime`."""
    before = {c.type: c for c in previous or []}
    out = []
    for spec in computed:
        old = before.get(spec.type)
        since = old.last_transition_time if old is not None and old.status == spec.status else now
        out.append(
            Condition(
                type=spec.type,
                status=spec.status,
                reason=spec.reason,
                message=spec.message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return out


def find(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    """The condition of `type_`, if present."""
    return next((c for c in conditions or [] if c.type == type_), None)


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.status == "True"


def status_differs(
    old: BaseModel | None, new: BaseModel, ignore: frozenset[str] = frozenset()
) -> bool:
    """Whether `new` differs from `old` outside the `ignore`d fields (None differs)."""
    if old is None:
        return True
    return old.model_dump(mode="json", exclude=set(ignore)) != new.model_dump(
        mode="json", exclude=set(ignore)
    )
