"""What placement works with: a view of each member cluster and the decision it returns.

`ClusterView` is the part of a ComputeCluster (spec plus probe results) that placement and the
builders read; the runtime builds one per ComputeCluster with `ClusterView.from_compute_cluster`.
`PlacementDecision` maps cluster names to replica counts, in order of preference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from tramontane_api.v1alpha1 import ComputeCluster

# Labels every ComputeCluster implicitly carries, so selectors can match cloud and region
# whether or not the platform team wrote them into metadata.labels.
CLOUD_LABEL: Final = "tramontane.dev/cloud"
REGION_LABEL: Final = "tramontane.dev/region"

# PlacementDecision.reason values.
REASON_PLACED: Final = "Placed"
REASON_NO_ELIGIBLE_CLUSTER: Final = "NoEligibleCluster"
REASON_INSUFFICIENT_CAPACITY: Final = "InsufficientCapacity"
REASON_FAILOVER: Final = "FailedOver"
REASON_NO_FAILOVER_TARGET: Final = "NoFailoverTarget"
REASON_PINNED_CLUSTER_MISSING: Final = "PinnedClusterMissing"


@dataclass(frozen=True)
class ClusterView:
    """What placement knows about one ComputeCluster."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cloud: str = "onprem"
    region: str = ""
    gpus_capacity: Mapping[str, int] = field(default_factory=dict)
    gpus_allocated: Mapping[str, int] = field(default_factory=dict)  # by OTHER pools
    reachable: bool = True
    kuberay_installed: bool = True
    cordoned: bool = False
    in_cluster: bool = False
    grpc_endpoint: str | None = None
    gpu_node_selectors: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def selector_labels(self) -> dict[str, str]:
        """metadata.labels plus the implied cloud and region labels (explicit labels win)."""
        return {CLOUD_LABEL: self.cloud, REGION_LABEL: self.region, **self.labels}

    def gpu_nodes(self, gpu_type: str | None) -> dict[str, str]:
        """The node labels of `gpu_type`'s nodes here (none declared: {})."""
        return dict(self.gpu_node_selectors.get(gpu_type or "", {}))

    def free_gpus(self, gpu_type: str) -> int:
        """GPUs of `gpu_type` not allocated to other pools (0 when the type is absent)."""
        capacity = self.gpus_capacity.get(gpu_type, 0)
        return max(0, capacity - self.gpus_allocated.get(gpu_type, 0))

    @classmethod
    def from_compute_cluster(
        cls,
        cc: ComputeCluster,
        *,
        reachable: bool,
        kuberay_installed: bool,
        gpus_allocated: Mapping[str, int] | None = None,
    ) -> ClusterView:
        """A view of `cc` given the runtime's probe results and other pools' GPU use."""
        spec = cc.spec
        return cls(
            name=cc.metadata.name,
            labels=dict(cc.metadata.labels or {}),
            cloud=spec.cloud,
            region=spec.region,
            gpus_capacity=dict(spec.gpus),
            gpus_allocated=dict(gpus_allocated or {}),
            reachable=reachable,
            kuberay_installed=kuberay_installed,
            cordoned=spec.cordoned,
            in_cluster=bool(spec.connection.in_cluster),
            grpc_endpoint=spec.ingress.grpc_endpoint if spec.ingress else None,
            gpu_node_selectors={t: dict(s) for t, s in (spec.gpu_node_selectors or {}).items()},
        )


@dataclass(frozen=True)
class PoolSize:
    """Replica counts of the pool in one cluster: start with `replicas`, scale within bounds."""

    replicas: int
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class PlacementDecision:
    """Where the pools go. `replicas`: cluster name -> replicas, in preference order.

    An empty mapping means unplaced. A cluster may get 0 replicas (minReplicas 0: the pool
    exists and its autoscaler starts workers on demand). `reason` is one of the REASON_*
    constants; `message` explains it in words. `sizes` holds each pool's share of the scaling
    bounds; `desired` the replicas wanted, so `shortfall` is what capacity left unplaced
    (even when the reason is another, e.g. FailedOver onto a smaller cluster).
    """

    replicas: Mapping[str, int]
    reason: str
    message: str
    sizes: Mapping[str, PoolSize] = field(default_factory=dict)
    desired: int | None = None  # replicas wanted in all; None: whatever was placed

    @property
    def shortfall(self) -> int:
        """Replicas wanted but not placed (free GPUs ran out)."""
        return 0 if self.desired is None else max(0, self.desired - self.total)

    @property
    def placed(self) -> bool:
        return bool(self.replicas)

    @property
    def total(self) -> int:
        return sum(self.replicas.values())

    def size(self, cluster: str) -> PoolSize:
        """The pool size for `cluster`; `KeyError` naming the cluster when it is not placed."""
        if cluster in self.sizes:
            return self.sizes[cluster]
        if cluster not in self.replicas:
            raise KeyError(f"cluster {cluster!r} is not in this placement")
        n = self.replicas[cluster]
        return PoolSize(n, n, max(n, 1))
