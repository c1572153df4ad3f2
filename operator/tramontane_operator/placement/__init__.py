"""Placement: which member clusters run a ModelDeployment's pools, with how many replicas.

Pure functions. The runtime builds a `ClusterView` per ComputeCluster and calls `place`.
"""

from __future__ import annotations

from .capacity import gpu_allocations, gpu_summary, pool_gpus
from .eligibility import candidates, selector_matches
from .strategies import desired_replicas, place, pool_sizes
from .types import (
    CLOUD_LABEL,
    REASON_FAILOVER,
    REASON_INSUFFICIENT_CAPACITY,
    REASON_NO_ELIGIBLE_CLUSTER,
    REASON_NO_FAILOVER_TARGET,
    REASON_PINNED_CLUSTER_MISSING,
    REASON_PLACED,
    REGION_LABEL,
    ClusterView,
    PlacementDecision,
    PoolSize,
)

__all__ = [
    "CLOUD_LABEL",
    "REASON_FAILOVER",
    "REASON_INSUFFICIENT_CAPACITY",
    "REASON_NO_ELIGIBLE_CLUSTER",
    "REASON_NO_FAILOVER_TARGET",
    "REASON_PINNED_CLUSTER_MISSING",
    "REASON_PLACED",
    "REGION_LABEL",
    "ClusterView",
    "PlacementDecision",
    "PoolSize",
    "candidates",
    "desired_replicas",
    "gpu_allocations",
    "gpu_summary",
    "place",
    "pool_gpus",
    "pool_sizes",
    "selector_matches",
]
