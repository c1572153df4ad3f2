"""Reconcile a ModelDeployment: desired children, and status from what was observed.

`desired_children` renders one RayService per placed cluster. `compute_status` aggregates the
pools KubeRay reports into the ModelDeployment status (per-cluster replicas and endpoint, the
Ready / Progressing / Degraded / Placed conditions, a phase derived from them).
`queued_status` is the status of one the tenant's quota holds back. `status_changed` says
whether a status needs writing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tramontane_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from tramontane_api.v1alpha1.modeldeployment import ClusterStatus, ModelDeploymentPhase
from tramontane_operator.builders import BuildSettings, build_rayservice, resolve_adapters
from tramontane_operator.builders.serve import serve_app_name
from tramontane_operator.placement import PlacementDecision
from tramontane_operator.placement.types import ClusterView

from . import pools
from .conditions import (
    DEGRADED,
    PLACED,
    PROGRESSING,
    READY,
    ConditionSpec,
    Reason,
    merge_conditions,
    status_differs,
)


@dataclass(frozen=True)
class ObservedPool:
    """What the runtime saw of one pool: its cluster, whether it answered, its RayService."""

    cluster: str
    reachable: bool
    rayservice: Mapping[str, Any] | None
    endpoint: str | None = None  # the cluster's gRPC ingress (ComputeCluster spec.ingress)


def desired_children(
    md: ModelDeployment,
    decision: PlacementDecision,
    clusters: Mapping[str, ClusterView],
    settings: BuildSettings,
    tenant: str | None,
    adapter_uris: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Cluster name -> the RayService to create or patch there (placed clusters only)."""
    out = {}
    for name in decision.replicas:
        if name not in clusters:
            raise KeyError(f"placement names cluster {name!r} but no ClusterView was given")
        out[name] = build_rayservice(
            md, clusters[name], decision.size(name), settings, tenant, adapter_uris
        )
    return out


def current_replicas(md: ModelDeployment) -> dict[str, int]:
    """Replicas per cluster as the last written status says (`place`'s `current`)."""
    status = md.status
    if status is None or not status.clusters:
        return {}
    return {c.name: c.desired_replicas for c in status.clusters}


def failed_clusters(observed: Sequence[ObservedPool], md: ModelDeployment) -> frozenset[str]:
    """Clusters whose pool KubeRay reports as failed (`place`'s `failed`)."""
    app_name = serve_app_name(md)
    return frozenset(
        o.cluster
        for o in observed
        if pools.read_pool(o.rayservice, app_name, reachable=o.reachable).state == pools.FAILED
    )


def _phase(conds: Mapping[str, ConditionSpec]) -> ModelDeploymentPhase:
    if conds[PLACED].status == "False":
        return "Failed" if conds[PLACED].reason == Reason.INVALID_SPEC else "Pending"
    if conds[DEGRADED].status == "True":
        return "Degraded"
    if conds[READY].status == "True":
        return "Ready"
    return "Progressing"


def compute_status(
    md: ModelDeployment,
    decision: PlacementDecision,
    observed: Sequence[ObservedPool],
    previous: ModelDeploymentStatus | None,
    now: datetime,
    adapter_uris: Mapping[str, str] | None = None,
    left_behind: Mapping[str, int] | None = None,
) -> ModelDeploymentStatus:
    """The ModelDeployment status for this placement and these observed pools.

    `left_behind`: replicas of pools in clusters that cannot be read now and are no longer
    placed: they may well still run, so they stay listed (state Unreachable, counted in no
    total) until their cluster answers and they are deleted — the ledger counts their GPUs
    from this list, after a restart too."""
    app = serve_app_name(md)
    seen = {o.cluster: o for o in observed}
    rows: list[ClusterStatus] = []
    readings: dict[str, pools.PoolReading] = {}
    for name, replicas in decision.replicas.items():
        obs = seen.get(name)
        reading = (
            pools.read_pool(obs.rayservice, app, reachable=obs.reachable)
            if obs is not None
            else pools.read_pool(None, app)
        )
        readings[name] = reading
        rows.append(
            ClusterStatus(
                name=name,
                ray_service=md.metadata.name,
                desired_replicas=replicas,
                ready_replicas=reading.ready_replicas,
                state=reading.state,
                endpoint=obs.endpoint if obs is not None else None,
                message=reading.message or None,
            )
        )
    for name, replicas in sorted((left_behind or {}).items()):
        if name not in decision.replicas:
            rows.append(
                ClusterStatus(
                    name=name,
                    ray_service=md.metadata.name,
                    desired_replicas=replicas,
                    state=pools.UNREACHABLE,
                    message="left behind in an unreachable cluster: deleted when it answers",
                )
            )
    adapters = resolve_adapters(md, adapter_uris)
    conds = {c.type: c for c in _conditions(decision, readings, adapters.unresolved)}
    gpu = md.spec.resources.gpu
    failover_time = previous.last_failover_time if previous else None
    if decision.reason == Reason.FAILED_OVER and (
        previous is None or {c.name for c in previous.clusters or []} != set(decision.replicas)
    ):
        failover_time = now
    ordered = [conds[t] for t in (READY, PROGRESSING, DEGRADED, PLACED)]
    return ModelDeploymentStatus(
        phase=_phase(conds),
        observed_generation=md.metadata.generation,
        conditions=merge_conditions(
            ordered, previous.conditions if previous else None, now, md.metadata.generation
        ),
        replicas=decision.total,
        ready_replicas=sum(r.ready_replicas for r in rows),
        gpus=decision.total * (gpu.count if gpu else 0),
        cluster_names=",".join(decision.replicas) or None,
        clusters=rows or None,
        adapters=adapters.names or None,
        adapter_versions=md.status.adapter_versions if md.status else None,
        last_failover_time=failover_time,
    )


def _conditions(
    decision: PlacementDecision,
    readings: Mapping[str, pools.PoolReading],
    unresolved_adapters: Sequence[str],
) -> list[ConditionSpec]:
    """Ready, Progressing, Degraded and Placed, in that order."""
    placed = ConditionSpec(
        PLACED, "True" if decision.placed else "False", decision.reason, decision.message
    )
    if not decision.placed:
        return [
            ConditionSpec(READY, "False", Reason.NOT_PLACED, decision.message),
            ConditionSpec(PROGRESSING, "False", Reason.NOT_PLACED, decision.message),
            ConditionSpec(DEGRADED, "True", decision.reason, decision.message),
            placed,
        ]
    by_state: dict[str, list[str]] = {}
    for name, reading in readings.items():
        by_state.setdefault(reading.state, []).append(name)
    return [
        _ready(decision, readings),
        _progressing(by_state, unresolved_adapters),
        _degraded(decision, by_state),
        placed,
    ]


def _ready(decision: PlacementDecision, readings: Mapping[str, pools.PoolReading]) -> ConditionSpec:
    """Ready: every placed pool serves, with at least its share of minReplicas ready."""
    lagging = {
        name: r
        for name, r in readings.items()
        if r.state not in pools.SERVING or r.ready_replicas < decision.size(name).min_replicas
    }
    if not lagging:
        return ConditionSpec(READY, "True", Reason.POOLS_READY, f"ready in {', '.join(readings)}")
    detail = "; ".join(
        f"{n}: {r.state}, {r.ready_replicas} ready" + (f" ({r.message})" if r.message else "")
        for n, r in lagging.items()
    )
    return ConditionSpec(READY, "False", Reason.POOLS_NOT_READY, detail)


# Progressing reasons by pool state, the first that applies wins.
_PROGRESS: tuple[tuple[str, str, str], ...] = (
    (pools.CREATING, Reason.CREATING, "creating in"),
    (pools.DEPLOYING, Reason.DEPLOYING, "deploying in"),
    (pools.UPGRADING, Reason.UPGRADING, "upgrading in"),
    (pools.UPDATING, Reason.UPDATING, "updating in"),
)


def _progressing(
    by_state: Mapping[str, list[str]], unresolved_adapters: Sequence[str]
) -> ConditionSpec:
    for state, reason, words in _PROGRESS:
        if by_state.get(state):
            return ConditionSpec(
                PROGRESSING, "True", reason, f"{words} {', '.join(by_state[state])}"
            )
    if unresolved_adapters:
        waiting = ", ".join(unresolved_adapters)
        return ConditionSpec(
            PROGRESSING,
            "True",
            Reason.ADAPTERS_PENDING,
            f"waiting for fine-tuned adapters: {waiting}",
        )
    return ConditionSpec(PROGRESSING, "False", Reason.STABLE, "")


def _degraded(decision: PlacementDecision, by_state: Mapping[str, list[str]]) -> ConditionSpec:
    if by_state.get(pools.FAILED):
        failed = ", ".join(by_state[pools.FAILED])
        return ConditionSpec(DEGRADED, "True", Reason.POOL_FAILED, f"pool failed in {failed}")
    if by_state.get(pools.UNREACHABLE):
        down = ", ".join(by_state[pools.UNREACHABLE])
        return ConditionSpec(
            DEGRADED, "True", Reason.CLUSTER_UNREACHABLE, f"cluster unreachable: {down}"
        )
    if decision.reason not in (Reason.PLACED, Reason.FAILED_OVER):
        return ConditionSpec(DEGRADED, "True", decision.reason, decision.message)
    if decision.shortfall:
        short = f"placed {decision.total} of {decision.desired} replicas (free GPUs)"
        return ConditionSpec(DEGRADED, "True", Reason.INSUFFICIENT_CAPACITY, short)
    return ConditionSpec(DEGRADED, "False", Reason.HEALTHY, "")


def queued_status(
    md: ModelDeployment,
    position: int | None,
    reason: str,
    previous: ModelDeploymentStatus | None,
    now: datetime,
) -> ModelDeploymentStatus:
    """Status of a deployment the tenant's quota holds back: phase Queued, its place in the
    tenant's queue, the limit in `Placed`; no pool exists (nothing is created while queued)."""
    message = f"queued at position {position}: {reason}" if position else reason
    specs = [
        ConditionSpec(READY, "False", Reason.QUEUED, message),
        ConditionSpec(PROGRESSING, "False", Reason.QUEUED, message),
        ConditionSpec(DEGRADED, "False", Reason.QUEUED, ""),
        ConditionSpec(PLACED, "False", Reason.QUOTA_EXCEEDED, message),
    ]
    generation = md.metadata.generation
    return ModelDeploymentStatus(
        phase="Queued",
        observed_generation=generation,
        conditions=merge_conditions(
            specs, previous.conditions if previous else None, now, generation
        ),
        replicas=0,
        ready_replicas=0,
        gpus=0,
        queue_position=position,
    )


def status_changed(old: ModelDeploymentStatus | None, new: ModelDeploymentStatus) -> bool:
    """Whether `new` differs from `old` (times kept by `merge_conditions` compare equal)."""
    return status_differs(old, new)


def invalid_spec_status(
    generation: int | None,
    message: str,
    previous: ModelDeploymentStatus | None,
    now: datetime,
) -> ModelDeploymentStatus:
    """Status for a spec that failed validation: phase Failed, reason InvalidSpec everywhere.

    Takes the generation, not the model, since an invalid object does not parse. What the
    previous status said about existing pools is kept: nothing is created or moved.
    """
    specs = [
        ConditionSpec(READY, "False", Reason.INVALID_SPEC, message),
        ConditionSpec(PROGRESSING, "False", Reason.INVALID_SPEC, message),
        ConditionSpec(DEGRADED, "True", Reason.INVALID_SPEC, message),
        ConditionSpec(PLACED, "False", Reason.INVALID_SPEC, message),
    ]
    base = previous or ModelDeploymentStatus()
    return base.model_copy(
        update={
            "phase": "Failed",
            "observed_generation": generation,
            "conditions": merge_conditions(
                specs, previous.conditions if previous else None, now, generation
            ),
        }
    )
