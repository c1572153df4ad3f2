"""The async Kubernetes client: one per cluster; list/watch informer; resource refs; leader
election on a Lease.

Shared by the operator and the router (neither Kopf nor anything operator-specific here).
"""

from .client import ApiError, Conflict, CredentialError, Invalid, KubeClient, NotFound, Unreachable
from .config import ClusterConfig, KubeconfigError
from .informer import Informer
from .leader import LeaderElectionConfig, LeaderElector, LeadershipLost
from .resources import (
    COMPUTECLUSTER,
    EVALUATION,
    EVENT,
    FINETUNEJOB,
    JOB,
    LEASE,
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
    "EVALUATION",
    "EVENT",
    "FINETUNEJOB",
    "JOB",
    "LEASE",
    "MODELDEPLOYMENT",
    "NAMESPACE",
    "POD",
    "RAYSERVICE",
    "SECRET",
    "TENANT",
    "ApiError",
    "ClusterConfig",
    "Conflict",
    "CredentialError",
    "Informer",
    "Invalid",
    "KubeClient",
    "KubeconfigError",
    "LeaderElectionConfig",
    "LeaderElector",
    "LeadershipLost",
    "NotFound",
    "ResourceRef",
    "Unreachable",
]
