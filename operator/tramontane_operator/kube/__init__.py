"""Operator-side Kubernetes plumbing: the member-cluster registry (a client, a child cache and
health per cluster) and the reconcile work queue. The client itself is `tramontane_kube`."""

from .clusters import MANAGED_BY_LABELS, ClusterRegistry, MemberCluster, ProbeResult
from .workqueue import HIGH, LOW, QueueClosed, WorkQueue

__all__ = [
    "HIGH",
    "LOW",
    "MANAGED_BY_LABELS",
    "ClusterRegistry",
    "MemberCluster",
    "ProbeResult",
    "QueueClosed",
    "WorkQueue",
]
