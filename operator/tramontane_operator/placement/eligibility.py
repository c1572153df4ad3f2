"""Which member clusters a ModelDeployment may use, and in what order of preference.

A cluster is a *candidate* when the placement names it (`clusters`) or its labels match
`clusterSelector` (neither set: every cluster). A candidate can *keep* an existing pool when
it is reachable, has KubeRay, has the requested GPU type and has not failed; it can take a
*new* pool when, in addition, it is not cordoned and has free GPUs for at least one replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tramontane_api.v1alpha1 import ModelDeployment
from tramontane_api.v1alpha1.common import LabelSelector

from .types import ClusterView


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every expression holds."""
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or []:
        values = req.values or []
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def gpus_per_replica(md: ModelDeployment) -> tuple[str | None, int]:
    """(GPU type, count) one replica needs; (None, 0) for CPU-only replicas."""
    gpu = md.spec.resources.gpu
    if gpu is None or gpu.count == 0:
        return None, 0
    return gpu.type, gpu.count


def replica_capacity(md: ModelDeployment, cluster: ClusterView) -> int | None:
    """How many replicas fit in the cluster's free GPUs; None means unbounded (no GPUs)."""
    gpu_type, count = gpus_per_replica(md)
    if gpu_type is None:
        return None
    return cluster.free_gpus(gpu_type) // count


def candidates(md: ModelDeployment, clusters: Sequence[ClusterView]) -> list[ClusterView]:
    """Clusters the placement names or selects, in preference order.

    Named clusters keep the order of `placement.clusters`. Selected ones (or all, when
    neither is set) are ordered by free GPUs of the requested type, most first, then name.
    """
    placement = md.spec.placement
    if placement.clusters is not None:
        by_name = {c.name: c for c in clusters}
        return [by_name[n] for n in placement.clusters if n in by_name]
    selector = placement.cluster_selector
    chosen = [
        c for c in clusters if selector is None or selector_matches(selector, c.selector_labels)
    ]
    gpu_type, _ = gpus_per_replica(md)
    if gpu_type is None:
        return sorted(chosen, key=lambda c: c.name)
    return sorted(chosen, key=lambda c: (-c.free_gpus(gpu_type), c.name))


def can_keep(md: ModelDeployment, cluster: ClusterView, failed: frozenset[str]) -> bool:
    """May an existing pool stay in this (candidate) cluster? Cordoning does not evict."""
    gpu_type, _ = gpus_per_replica(md)
    return (
        cluster.reachable
        and cluster.kuberay_installed
        and cluster.name not in failed
        and (gpu_type is None or cluster.gpus_capacity.get(gpu_type, 0) > 0)
    )


def can_take(md: ModelDeployment, cluster: ClusterView, failed: frozenset[str]) -> bool:
    """May a new pool go to this (candidate) cluster?"""
    capacity = replica_capacity(md, cluster)
    return (
        can_keep(md, cluster, failed)
        and not cluster.cordoned
        and (capacity is None or capacity >= 1)
    )


def why_ineligible(md: ModelDeployment, cluster: ClusterView, failed: frozenset[str]) -> str:
    """A short reason a candidate cannot take a new pool ('' when it can)."""
    gpu_type, count = gpus_per_replica(md)
    if not cluster.reachable:
        return "unreachable"
    if not cluster.kuberay_installed:
        return "KubeRay not installed"
    if cluster.name in failed:
        return "pool failed"
    if cluster.cordoned:
        return "cordoned"
    if gpu_type is not None and cluster.gpus_capacity.get(gpu_type, 0) == 0:
        return f"no {gpu_type} GPUs"
    if gpu_type is not None and cluster.free_gpus(gpu_type) < count:
        return f"{cluster.free_gpus(gpu_type)} {gpu_type} GPUs free, {count} needed per replica"
    return ""
