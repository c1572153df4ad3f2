"""ComputeCluster status from a probe: Reachable, KubeRayInstalled and Ready conditions.

The runtime probes each member cluster (API reachable? KubeRay's CRDs installed?) and calls
`compute_cluster_status`; `None` for a probe result means "not probed yet".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from tramontane_api.v1alpha1 import ComputeCluster, ComputeClusterStatus
from tramontane_api.v1alpha1.computecluster import ComputeClusterPhase
from tramontane_operator.placement.capacity import gpu_summary

from .conditions import (
    KUBERAY_INSTALLED,
    REACHABLE,
    READY,
    ConditionSpec,
    Reason,
    merge_conditions,
    status_differs,
)


def _probe_conditions(
    cc: ComputeCluster, reachable: bool | None, kuberay: bool | None, error: str | None
) -> tuple[list[ConditionSpec], ComputeClusterPhase]:
    if reachable is None:
        reach = ConditionSpec(REACHABLE, "Unknown", Reason.NOT_PROBED, "not probed yet")
    elif reachable:
        reach = ConditionSpec(REACHABLE, "True", Reason.REACHABLE, "API server answered")
    else:
        reach = ConditionSpec(
            REACHABLE, "False", Reason.UNREACHABLE, error or "API server did not answer"
        )
    if not reachable or kuberay is None:
        ray = ConditionSpec(KUBERAY_INSTALLED, "Unknown", Reason.NOT_PROBED, "cluster not probed")
    elif kuberay:
        ray = ConditionSpec(KUBERAY_INSTALLED, "True", Reason.KUBERAY_FOUND, "ray.io/v1 found")
    else:
        ray = ConditionSpec(
            KUBERAY_INSTALLED, "False", Reason.KUBERAY_MISSING, "ray.io/v1 RayService CRD missing"
        )
    if reachable is None:
        return [ConditionSpec(READY, "Unknown", Reason.NOT_PROBED, "not probed yet"), reach, ray], (
            "Pending"
        )
    if not reachable:
        return [ConditionSpec(READY, "False", Reason.UNREACHABLE, reach.message), reach, ray], (
            "Unreachable"
        )
    if kuberay is False:
        return [ConditionSpec(READY, "False", Reason.KUBERAY_MISSING, ray.message), reach, ray], (
            "NotReady"
        )
    if kuberay is None:
        return [ConditionSpec(READY, "Unknown", Reason.NOT_PROBED, ray.message), reach, ray], (
            "Pending"
        )
    if cc.spec.cordoned:
        ready = ConditionSpec(READY, "True", Reason.CORDONED, "ready; cordoned: no new pools")
    else:
        ready = ConditionSpec(READY, "True", Reason.CLUSTER_READY, "ready for pools")
    return [ready, reach, ray], "Ready"


def compute_cluster_status(
    cc: ComputeCluster,
    *,
    reachable: bool | None,
    kuberay_installed: bool | None,
    allocated_gpus: Mapping[str, int],
    previous: ComputeClusterStatus | None,
    now: datetime,
    kubernetes_version: str | None = None,
    error: str | None = None,
) -> ComputeClusterStatus:
    """The ComputeCluster status after a probe (`error`: why it was unreachable)."""
    conditions, phase = _probe_conditions(cc, reachable, kuberay_installed, error)
    generation = cc.metadata.generation
    allocated = {t: n for t, n in sorted(allocated_gpus.items()) if n}
    probed = reachable is not None
    return ComputeClusterStatus(
        phase=phase,
        observed_generation=generation,
        conditions=merge_conditions(
            conditions, previous.conditions if previous else None, now, generation
        ),
        last_probe_time=now if probed else (previous.last_probe_time if previous else None),
        kubernetes_version=kubernetes_version
        or (previous.kubernetes_version if previous else None),
        allocated_gpus=allocated,
        gpu_summary=gpu_summary(cc.spec.gpus, allocated),
    )


def cluster_status_changed(old: ComputeClusterStatus | None, new: ComputeClusterStatus) -> bool:
    """Whether `new` needs writing. The probe time alone is not a change (no write per probe)."""
    return status_differs(old, new, frozenset({"last_probe_time"}))
