"""ModelDeployment: a Mistral model (plus LoRA adapters) served by Ray worker pools.

One ModelDeployment becomes one KubeRay RayService per placed member cluster. The spec says
what to serve (model, runtime, adapters), on what hardware (resources), how many replicas
(scaling), where (placement) and how to roll out changes (rollout).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from .common import (
    AGE_COLUMN,
    LIST_SET,
    PHASE_COLUMN,
    READY_COLUMN,
    ApiModel,
    Conditions,
    DnsLabel,
    GpuType,
    KindInfo,
    LabelSelector,
    LocalObjectReference,
    ModelUri,
    PrinterColumn,
    Quantity,
    Resource,
    Rule,
    ScaleSubresource,
    Toleration,
    config_with_rules,
    list_map,
)

# RayService names get suffixes from KubeRay (RayCluster "-xxxxx", "-head-svc", ...);
# 40 characters keeps every derived name a valid DNS label.
MAX_NAME_LENGTH = 40


class ModelSource(ApiModel):
    """The model to serve and where its weights are."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
            description="Served model name: what clients put in a request's `model` field.",
        ),
    ]
    source: ModelUri
    format: Literal["auto", "mistral", "hf"] = Field(
        default="auto",
        description="Checkpoint format: mistral (consolidated.safetensors + params.json), hf "
        "(config.json), or auto to detect it.",
    )


class Runtime(ApiModel):
    """Engine settings."""

    model_config = config_with_rules(
        Rule(
            "self.engine == 'vllm' || self.tensorParallelSize == 1",
            "tensorParallelSize > 1 needs engine vllm",
            field_path=".tensorParallelSize",
        )
    )

    engine: Literal["vllm", "transformers"] = Field(
        default="vllm",
        description="vllm on GPUs; transformers is the reference engine (CPU or GPU).",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: Annotated[int, Field(ge=16, le=1_048_576)] | None = Field(
        default=None, description="Context length; defaults to the model's own."
    )
    tensor_parallel_size: Annotated[int, Field(ge=1, le=16)] = 1
    tool_calling: bool = Field(default=True, description="Parse tool calls from model output.")
    max_adapters_per_replica: Annotated[int, Field(ge=1, le=256)] = Field(
        default=4, description="LoRA adapters kept loaded per replica (LRU beyond that)."
    )
    image: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="Worker container image; defaults to the operator's setting."
    )


# A version of an adapter is named by the short digest of its resolved URI (see
# `adapter_version`); every kept version is served as `<adapter>@<version>`.
ADAPTER_VERSION_PATTERN = r"^[0-9a-f]{8}$"
VERSION_SEPARATOR = "@"


def adapter_version(uri: str) -> str:
    """The version of an adapter whose weights are at `uri`: 8 hex digits of its SHA-256."""
    return hashlib.sha256(uri.encode()).hexdigest()[:8]


class RolloutStep(ApiModel):
    """One step of a canary: the new version's share of its adapter's traffic, held a while."""

    weight: Annotated[int, Field(ge=1, le=100)] = Field(
        description="Percent of the adapter's requests the new version takes in this step."
    )
    hold_seconds: Annotated[int, Field(ge=0, le=86_400)] = Field(
        default=60,
        description="How long the step is held (and analysed) before the next one; a step "
        "also waits for analysis.minRequests requests on the new version.",
    )


MAX_EXPECT_LENGTH = 256


class ProbeMessage(ApiModel):
    """One message of an online check's chat."""

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(min_length=1, max_length=2048)]


class OnlineCheck(ApiModel):
    """A probe every router sends to the new version during its steps (greedy, temperature
    0), through the path real requests take; an answer that does not match `expect`, or a
    probe that fails or times out, is a breach. Probes are system traffic: no tenant's
    limits or usage, and not in the version's request and error figures."""

    model_config = config_with_rules(
        Rule(
            "self.messages.exists(m, m.role == 'user')",
            "messages: at least one message must have role user",
        )
    )

    messages: Annotated[list[ProbeMessage], Field(min_length=1, max_length=16)] = Field(
        description="The probe's chat (at least one user message)."
    )
    expect: Annotated[str, Field(min_length=1, max_length=MAX_EXPECT_LENGTH)] = Field(
        description="A regular expression (Python syntax) the answer must contain a match "
        "of (searched, not matched in full)."
    )
    interval_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=10, description="How often each router sends the probe."
    )
    max_tokens: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=32, description="Most tokens the answer may have."
    )

    @field_validator("messages")
    @classmethod
    def _a_user_message(cls, messages: list[ProbeMessage]) -> list[ProbeMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("at least one message must have role user")
        return messages

    @field_validator("expect")
    @classmethod
    def _compiles(cls, expect: str) -> str:
        try:
            re.compile(expect)
        except re.error as exc:
            raise ValueError(
                f"{expect!r} is not a valid regular expression ({exc})"
            ) from None
        return expect


class RolloutAnalysis(ApiModel):
    """What a canary is judged on, by every router and by the operator: the new version
    against the version it replaces, over the routers' last 10 s (their window), and, with
    `onlineCheck`, on the answers to a probe."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05, description="Most failed requests the new version may have (fraction)."
    )
    max_p99_latency_ratio: Annotated[float, Field(ge=1)] = Field(
        default=2.0,
        description="Most the new version's p99 latency may be, as a multiple of the "
        "previous version's.",
    )
    min_requests: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=20,
        description="Requests the new version must have served before it is judged (and "
        "before a step may end).",
    )
    online_check: OnlineCheck | None = Field(
        default=None,
        description="A probe the routers send to the new version during its steps; a wrong "
        "or failed answer rolls it back.",
    )


class AdapterRollout(ApiModel):
    """Progressive promotion of a new adapter version (a canary)."""

    steps: Annotated[list[RolloutStep], Field(min_length=1, max_length=10)] = Field(
        description="The new version's weights, in order; after the last it takes 100 %."
    )
    analysis: RolloutAnalysis = Field(default_factory=RolloutAnalysis)


class Adapter(ApiModel):
    """A LoRA adapter served on top of the base model, from a URI or a FineTuneJob's output.

    A new `uri` (or a FineTuneJob with another output) is a new version of the adapter:
    without `rollout` it takes all the traffic at once; with `rollout` it is a canary,
    promoted step by step and rolled back automatically on a breach. The last versions are
    kept (`status.adapterVersions`), so rolling back by hand is one field: `version`."""

    model_config = config_with_rules(
        Rule(
            "has(self.uri) != has(self.fineTuneJobRef)",
            "set exactly one of uri or fineTuneJobRef",
        )
    )

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            description="Adapter name clients use in a request's `model` field.",
        ),
    ]
    uri: ModelUri | None = None
    fine_tune_job_ref: LocalObjectReference | None = None
    rollout: AdapterRollout | None = Field(
        default=None,
        description="Promote a new version progressively (omit: a new version takes 100 % "
        "at once).",
    )
    version: Annotated[str, Field(pattern=ADAPTER_VERSION_PATTERN)] | None = Field(
        default=None,
        description="Pin a kept version (status.adapterVersions) at 100 %, at once: the "
        "manual rollback. While set, the uri's version is not rolled out.",
    )


class GpuRequest(ApiModel):
    type: GpuType
    count: Annotated[int, Field(ge=0, le=16)] = 1


class Resources(ApiModel):
    """Per-replica resources and scheduling (no full PodTemplateSpec on purpose)."""

    gpu: GpuRequest | None = Field(default=None, description="Omit for CPU-only replicas.")
    cpu: Quantity = "4"
    memory: Quantity = "32Gi"
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None


class Scaling(ApiModel):
    """Replica counts per ModelDeployment (split across clusters by placement)."""

    model_config = config_with_rules(
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
            field_path=".minReplicas",
        ),
        Rule(
            "!has(self.replicas) || (self.replicas >= self.minReplicas"
            " && self.replicas <= self.maxReplicas)",
            "replicas must lie between minReplicas and maxReplicas",
            field_path=".replicas",
        ),
    )

    replicas: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Replicas to start with (`kubectl scale` sets it); the autoscaler moves "
        "between minReplicas and maxReplicas.",
    )
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 2.0
    scale_down_delay_seconds: Annotated[int, Field(ge=0)] = 600


PlacementStrategy = Literal["Spread", "Failover", "Pinned"]


class Placement(ApiModel):
    """Which member clusters run pools."""

    model_config = config_with_rules(
        Rule(
            "!(has(self.clusters) && has(self.clusterSelector))",
            "set clusters or clusterSelector, not both",
        ),
        Rule(
            "self.strategy != 'Pinned' || (has(self.clusters) && size(self.clusters) > 0)",
            "strategy Pinned needs clusters",
            field_path=".clusters",
        ),
    )

    clusters: Annotated[list[DnsLabel], Field(json_schema_extra=LIST_SET)] | None = Field(
        default=None, description="ComputeCluster names, in order of preference."
    )
    cluster_selector: LabelSelector | None = Field(
        default=None, description="Select ComputeClusters by their labels."
    )
    strategy: PlacementStrategy = Field(
        default="Spread",
        description="Spread: split replicas over up to maxClusters clusters. Failover: one "
        "cluster, moved to the next eligible one when it fails. Pinned: exactly `clusters`.",
    )
    max_clusters: Annotated[int, Field(ge=1, le=64)] = 1


class Rollout(ApiModel):
    max_surge_percent: Annotated[int, Field(ge=0, le=100)] = Field(
        default=25,
        description="Extra capacity during an upgrade, as a percent of replicas; 0 replaces the "
        "whole Ray cluster at once.",
    )


class ModelDeploymentSpec(ApiModel):
    model_config = config_with_rules(
        Rule(
            "!has(self.resources.gpu) || self.resources.gpu.count >= "
            "self.runtime.tensorParallelSize",
            "resources.gpu.count must be at least runtime.tensorParallelSize",
            field_path=".resources.gpu.count",
        ),
        Rule(
            "self.runtime.engine != 'vllm' || (has(self.resources.gpu) && "
            "self.resources.gpu.count > 0)",
            "engine vllm needs resources.gpu",
            field_path=".runtime.engine",
        ),
        # The reference engine loads Hugging Face checkpoints only (TransformersEngine
        # refuses a Mistral-format one at start-up), so say so at admission instead.
        Rule(
            "self.runtime.engine != 'transformers' || self.model.format != 'mistral'",
            "engine transformers needs a Hugging Face checkpoint (format hf or auto); serve a "
            "Mistral-format checkpoint with engine vllm",
            field_path=".model.format",
        ),
    )

    model: ModelSource
    runtime: Runtime = Field(default_factory=Runtime)
    adapters: Annotated[list[Adapter], Field(json_schema_extra=list_map("name"))] | None = None
    resources: Resources = Field(default_factory=Resources)
    scaling: Scaling = Field(default_factory=Scaling)
    placement: Placement = Field(default_factory=Placement)
    rollout: Rollout = Field(default_factory=Rollout)
    priority: Annotated[int, Field(ge=-1000, le=1000)] = Field(
        default=0,
        description="Higher is admitted first within the tenant's quota, then oldest first.",
    )


ModelDeploymentPhase = Literal["Queued", "Pending", "Progressing", "Ready", "Degraded", "Failed"]


class ClusterStatus(ApiModel):
    """The pool in one member cluster."""

    name: str
    ray_service: str | None = None
    desired_replicas: int = 0
    ready_replicas: int = 0
    state: str | None = Field(default=None, description="What KubeRay reports for the pool.")
    endpoint: str | None = Field(default=None, description="gRPC endpoint routers use.")
    message: str | None = None


AdapterVersionState = Literal["Stable", "Canary", "Previous", "RolledBack"]


class AdapterVersion(ApiModel):
    """One kept version of an adapter and its share of the adapter's traffic."""

    version: str
    uri: str
    served_as: str = Field(description="The name the workers serve it under.")
    weight: Annotated[int, Field(ge=0, le=100)] = 0
    state: AdapterVersionState
    since: datetime | None = Field(default=None, description="When it entered its state.")


class AdapterRollback(ApiModel):
    version: str
    reason: str
    time: datetime


class AdapterVersions(ApiModel):
    """An adapter's kept versions (newest first), its canary's progress, its last rollback."""

    name: str
    versions: list[AdapterVersion] = Field(default_factory=list)
    step: int | None = Field(default=None, description="The canary's step (0-based).")
    step_since: datetime | None = None
    message: str | None = None
    last_rollback: AdapterRollback | None = None


class ModelDeploymentStatus(ApiModel):
    phase: ModelDeploymentPhase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    replicas: int | None = Field(default=None, description="Desired replicas, all clusters.")
    ready_replicas: int | None = None
    gpus: int | None = Field(default=None, description="GPUs requested, all clusters.")
    cluster_names: str | None = Field(default=None, description="Placed clusters, for display.")
    clusters: Annotated[list[ClusterStatus], Field(json_schema_extra=list_map("name"))] | None = (
        None
    )
    adapters: list[str] | None = None
    adapter_versions: (
        Annotated[list[AdapterVersions], Field(json_schema_extra=list_map("name"))] | None
    ) = Field(default=None, description="Kept versions of each adapter and their weights.")
    last_failover_time: datetime | None = None
    queue_position: int | None = Field(
        default=None, description="1-based place in the tenant's queue while Queued."
    )
    quota_gpus: int | None = Field(
        default=None,
        description="GPUs counted against the tenant's quota once admitted (maxReplicas x "
        "gpu.count, less while a grown maxReplicas is capped by the quota).",
    )


class ModelDeployment(Resource):
    """A served Mistral model with its adapters, placed on one or more member clusters."""

    KIND_INFO: ClassVar[KindInfo] = KindInfo(
        kind="ModelDeployment",
        plural="modeldeployments",
        singular="modeldeployment",
        scope="Namespaced",
        short_names=("md",),
        printer_columns=(
            READY_COLUMN,
            PHASE_COLUMN,
            PrinterColumn("Model", "string", ".spec.model.name"),
            PrinterColumn("Replicas", "integer", ".status.replicas", "Desired replicas"),
            PrinterColumn("Available", "integer", ".status.readyReplicas", "Ready replicas"),
            PrinterColumn("GPUs", "integer", ".status.gpus", "GPUs requested"),
            PrinterColumn("Clusters", "string", ".status.clusterNames"),
            PrinterColumn("Engine", "string", ".spec.runtime.engine", priority=1),
            PrinterColumn("Queue", "integer", ".status.queuePosition", priority=1),
            AGE_COLUMN,
        ),
        scale=ScaleSubresource(".spec.scaling.replicas", ".status.replicas"),
        root_rules=(
            Rule(
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(KubeRay derives longer names from it)",
                field_path=".metadata.name",
            ),
        ),
    )

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
