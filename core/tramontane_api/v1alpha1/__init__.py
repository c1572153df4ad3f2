"""tramontane.dev/v1alpha1: ModelDeployment, FineTuneJob, Evaluation, Tenant, ComputeCluster."""

from __future__ import annotations

from .common import API_VERSION, CATEGORY, GROUP, VERSION, Condition, KindInfo, Resource
from .computecluster import ComputeCluster, ComputeClusterSpec, ComputeClusterStatus
from .evaluation import Evaluation, EvaluationSpec, EvaluationStatus
from .finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .tenant import Tenant, TenantSpec, TenantStatus

# Every root kind, in the order CRDs and docs list them.
KINDS: tuple[type[Resource], ...] = (
    ModelDeployment,
    FineTuneJob,
    Evaluation,
    Tenant,
    ComputeCluster,
)
KINDS_BY_NAME: dict[str, type[Resource]] = {k.KIND_INFO.kind: k for k in KINDS}

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "KINDS",
    "KINDS_BY_NAME",
    "VERSION",
    "ComputeCluster",
    "ComputeClusterSpec",
    "ComputeClusterStatus",
    "Condition",
    "Evaluation",
    "EvaluationSpec",
    "EvaluationStatus",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "KindInfo",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "Resource",
    "Tenant",
    "TenantSpec",
    "TenantStatus",
]
