"""Reconcile: pure (spec, observed state) -> desired children and status. No I/O."""

from __future__ import annotations

from .modeldeployment import (
    ObservedPool,
    compute_status,
    current_replicas,
    desired_children,
    failed_clusters,
    status_changed,
)

__all__ = [
    "ObservedPool",
    "compute_status",
    "current_replicas",
    "desired_children",
    "failed_clusters",
    "status_changed",
]
