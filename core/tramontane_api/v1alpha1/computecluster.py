"""ComputeCluster: a member cluster that runs Ray worker pools.

Cluster-scoped. Says where the cluster is (cloud, region; selectable through its
`metadata.labels`), how the operator reaches it (in-cluster, or a kubeconfig Secret), what GPUs
it has and what they cost, and where routers reach its Ray Serve gRPC ingress.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import (
    AGE_COLUMN,
    PHASE_COLUMN,
    READY_COLUMN,
    ApiModel,
    Conditions,
    GpuType,
    KindInfo,
    PrinterColumn,
    Resource,
    Rule,
    SecretKeyReference,
    config_with_rules,
)

Cloud = Literal["azure", "aws", "gcp", "onprem"]


class KubeconfigSecretRef(SecretKeyReference):
    key: Annotated[str, Field(min_length=1)] = "kubeconfig"


class Connection(ApiModel):
    """How the operator reaches the cluster's API server."""

    model_config = config_with_rules(
        Rule(
            "(has(self.inCluster) && self.inCluster) != has(self.kubeconfigSecretRef)",
            "set exactly one of inCluster: true or kubeconfigSecretRef",
        )
    )

    in_cluster: bool | None = Field(
        default=None, description="The cluster the operator runs in (the hub)."
    )
    kubeconfig_secret_ref: KubeconfigSecretRef | None = None


class Pricing(ApiModel):
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    gpu_hour: (
        Annotated[dict[GpuType, Annotated[float, Field(ge=0)]], Field(max_length=64)] | None
    ) = Field(default=None, description="Price of one GPU-hour per GPU type.")


class Ingress(ApiModel):
    grpc_endpoint: Annotated[
        str, Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", description="host:port")
    ]
    tls: bool = True


class ComputeClusterSpec(ApiModel):
    model_config = config_with_rules(
        Rule(
            "!has(self.pricing) || !has(self.pricing.gpuHour) || "
            "self.pricing.gpuHour.all(t, t in self.gpus)",
            "pricing.gpuHour names a GPU type that gpus does not list",
            field_path=".pricing.gpuHour",
        ),
        Rule(
            "!has(self.gpuNodeSelectors) || self.gpuNodeSelectors.all(t, t in self.gpus)",
            "gpuNodeSelectors names a GPU type that gpus does not list",
            field_path=".gpuNodeSelectors",
        ),
    )

    cloud: Cloud
    region: Annotated[str, Field(min_length=1, max_length=64)]
    connection: Connection
    gpus: Annotated[dict[GpuType, Annotated[int, Field(ge=0)]], Field(max_length=64)] = Field(
        default_factory=dict, description="GPU capacity per GPU type."
    )
    gpu_node_selectors: (
        Annotated[
            dict[GpuType, Annotated[dict[str, str], Field(min_length=1, max_length=16)]],
            Field(max_length=64),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "The node labels of each GPU type's nodes here (e.g. its node pool: "
            "{H100: {kubernetes.azure.com/agentpool: h100}}): the Ray workers of a pool or "
            "job asking for that type are scheduled there. Set it wherever gpus lists more "
            "than one type, or a pool may land on another type's nodes."
        ),
    )
    pricing: Pricing | None = None
    ingress: Ingress | None = Field(
        default=None, description="Where routers reach this cluster's Ray Serve gRPC ingress."
    )
    cordoned: bool = Field(default=False, description="Place nothing new here.")


ComputeClusterPhase = Literal["Pending", "Ready", "Unreachable", "NotReady"]


class ComputeClusterStatus(ApiModel):
    phase: ComputeClusterPhase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    last_probe_time: datetime | None = None
    kubernetes_version: str | None = None
    allocated_gpus: dict[str, int] | None = Field(
        default=None, description="GPUs requested by placed pools, per GPU type."
    )
    gpu_summary: str | None = Field(default=None, description="allocated/capacity, for display.")


class ComputeCluster(Resource):
    """A member cluster the operator places Ray worker pools on."""

    KIND_INFO: ClassVar[KindInfo] = KindInfo(
        kind="ComputeCluster",
        plural="computeclusters",
        singular="computecluster",
        scope="Cluster",
        short_names=("cc",),
        printer_columns=(
            READY_COLUMN,
            PHASE_COLUMN,
            PrinterColumn("Cloud", "string", ".spec.cloud"),
            PrinterColumn("Region", "string", ".spec.region"),
            PrinterColumn("GPUs", "string", ".status.gpuSummary", "Allocated/capacity"),
            AGE_COLUMN,
        ),
    )

    kind: Literal["ComputeCluster"] = "ComputeCluster"
    spec: ComputeClusterSpec
    status: ComputeClusterStatus | None = None
