"""Reconcile: pure (spec, observed state) -> desired children and status. No I/O."""

from __future__ import annotations

from .computecluster import cluster_status_changed, compute_cluster_status
from .conditions import Reason
from .modeldeployment import (
    ObservedPool,
    compute_status,
    current_replicas,
    desired_children,
    failed_clusters,
    invalid_spec_status,
    queued_status,
    status_changed,
)

__all__ = [
    "ObservedPool",
    "Reason",
    "cluster_status_changed",
    "compute_cluster_status",
    "compute_status",
    "current_replicas",
    "desired_children",
    "failed_clusters",
    "invalid_spec_status",
    "queued_status",
    "status_changed",
]
