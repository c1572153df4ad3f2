"""The only Kubernetes I/O seam: one async client per member cluster, a child cache, health."""

from .client import ApiError, Conflict, Invalid, KubeClient, NotFound, Unreachable
from .clusters import MANAGED_BY_LABELS, ClusterRegistry, MemberCluster, ProbeResult
from .config import ClusterConfig, KubeconfigError
from .resources import (
    COMPUTECLUSTER,
    EVENT,
    FINETUNEJOB,
    JOB,
    MODELDEPLOYMENT,
    NAMESPACE,
    POD,
    RAYSERVICE,
    SECRET,
    TENANT,
    ResourceRef,
)

__all__ = [
    "COMPUTECLUSTER",
    "EVENT",
    "FINETUNEJOB",
    "JOB",
    "MANAGED_BY_LABELS",
    "MODELDEPLOYMENT",
    "NAMESPACE",
    "POD",
    "RAYSERVICE",
    "SECRET",
    "TENANT",
    "ApiError",
    "ClusterConfig",
    "ClusterRegistry",
    "Conflict",
    "Invalid",
    "KubeClient",
    "KubeconfigError",
    "MemberCluster",
    "NotFound",
    "ProbeResult",
    "ResourceRef",
    "Unreachable",
]
