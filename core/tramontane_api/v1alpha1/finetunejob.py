"""FineTuneJob: a LoRA (or full) fine-tune of a Mistral model on a tenant's chat data.

Shaped after Mistral's fine-tuning API (training files with weights, hyperparameters named
training steps / learning rate / warmup fraction / weight decay / sequence length) and Kueue-
style job controls (suspend, priority). The operator validates the data, estimates cost,
renders a KubeRay RayJob, follows progress, and can deploy the resulting adapter.

Changing a job (CEL transition rules, like Kubernetes Job's): what it trains on and where it
writes (baseModel, trainingFiles, validationFiles, method, output) never changes;
hyperparameters, resources and placement change only while the job is suspended (the RayJob
is rendered anew on resume, from the last checkpoint); dryRun can be turned off, not on;
suspend, priority, activeDeadlineSeconds, backoffLimit and autoDeploy change at any time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import (
    AGE_COLUMN,
    LIST_SET,
    PHASE_COLUMN,
    ApiModel,
    Conditions,
    DataUri,
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
    config_with_rules,
    immutable,
)
from .evaluation import EvaluationDataset, MetricThresholds


class BaseModelSource(ApiModel):
    """The model to fine-tune: a ModelDeployment's model, or a URI (HF format)."""

    model_config = config_with_rules(
        Rule(
            "has(self.modelDeploymentRef) != has(self.uri)",
            "set exactly one of modelDeploymentRef or uri",
        )
    )

    model_deployment_ref: LocalObjectReference | None = None
    uri: ModelUri | None = None


class TrainingFile(ApiModel):
    uri: DataUri
    weight: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=1.0, description="Relative sampling weight when mixing several files."
    )


class ValidationFile(ApiModel):
    uri: DataUri


class LoraConfig(ApiModel):
    rank: Annotated[int, Field(ge=1, le=512)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: Annotated[list[str], Field(min_length=1, json_schema_extra=LIST_SET)] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]


class Method(ApiModel):
    model_config = config_with_rules(
        Rule(
            "self.type == 'lora' || !has(self.lora)",
            "lora settings apply only to type lora",
            field_path=".lora",
        )
    )

    type: Literal["lora", "full"] = "lora"
    lora: LoraConfig | None = Field(
        default=None, description="LoRA settings; defaults apply when omitted."
    )


class Hyperparameters(ApiModel):
    model_config = config_with_rules(
        Rule(
            "has(self.trainingSteps) != has(self.epochs)",
            "set exactly one of trainingSteps or epochs",
        )
    )

    training_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    epochs: Annotated[float, Field(gt=0, le=1000)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4
    warmup_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.1
    sequence_length: Annotated[int, Field(ge=16, le=131_072)] = 4096
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=8, description="Sequences per optimizer step, all workers together."
    )
    checkpoint_every_steps: Annotated[int, Field(ge=1)] = 100
    seed: int = 0


class TrainingResources(ApiModel):
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    gpus_per_worker: Annotated[int, Field(ge=0, le=16)] = 1
    gpu_type: GpuType | None = Field(default=None, description="Required when gpusPerWorker > 0.")
    cpu: Quantity = "8"
    memory: Quantity = "64Gi"


class JobPlacement(ApiModel):
    model_config = config_with_rules(
        Rule(
            "!(has(self.clusters) && has(self.clusterSelector))",
            "set clusters or clusterSelector, not both",
        )
    )

    clusters: Annotated[list[DnsLabel], Field(max_length=64, json_schema_extra=LIST_SET)] | None = (
        None
    )
    cluster_selector: LabelSelector | None = None


class Output(ApiModel):
    uri: DataUri = Field(description="Where checkpoints and the final adapter are written.")


GateBaseline = Literal["None", "BaseModel", "Current"]


class DeploymentGate(ApiModel):
    """An Evaluation the trained adapter must pass before it is deployed."""

    model_config = config_with_rules(
        Rule(
            "self.baseline != 'None' || self.metrics.all(m, !has(m.minDelta))",
            "metrics[].minDelta compares with a baseline: set baseline to BaseModel or Current",
            field_path=".metrics",
        )
    )

    dataset: EvaluationDataset
    metrics: MetricThresholds
    baseline: GateBaseline = Field(
        default="Current",
        description="What minDelta and deltas compare with: Current, the adapter served under "
        "adapterName now (the base model when there is none); BaseModel; or None.",
    )
    max_samples: Annotated[int, Field(ge=1)] | None = None


class AutoDeploy(ApiModel):
    """Add the trained adapter to a ModelDeployment (same namespace, same tenant)."""

    model_deployment_ref: LocalObjectReference
    adapter_name: Annotated[
        str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ]
    evaluation: DeploymentGate | None = Field(
        default=None,
        description="Deploy only when an Evaluation of the adapter passes these thresholds.",
    )


_SUSPENDED_ONLY = (
    "{field} can change only while the job is suspended: set suspend to true first, change "
    "{field}, then set suspend to false (the training resumes from the last checkpoint)"
)


def _while_suspended(name: str) -> Rule:
    """`spec.<name>` may change only between two suspended versions of the job."""
    return Rule(
        f"(oldSelf.suspend && self.suspend) || self.{name} == oldSelf.{name}",
        _SUSPENDED_ONLY.format(field=name),
        field_path=f".{name}",
        reason="FieldValueForbidden",
    )


class FineTuneJobSpec(ApiModel):
    model_config = config_with_rules(
        Rule(
            "self.resources.gpusPerWorker == 0 || has(self.resources.gpuType)",
            "resources.gpuType is required when resources.gpusPerWorker > 0",
            field_path=".resources.gpuType",
        ),
        Rule(
            "!has(self.autoDeploy) || self.method.type == 'lora'",
            "autoDeploy needs method lora (a full fine-tune produces a model, not an adapter)",
            field_path=".autoDeploy",
        ),
        Rule(
            "has(self.validationFiles) == has(oldSelf.validationFiles) && "
            "(!has(self.validationFiles) || self.validationFiles == oldSelf.validationFiles)",
            "validationFiles is immutable; create a new object to change it",
            field_path=".validationFiles",
            reason="FieldValueForbidden",
        ),
        *(_while_suspended(name) for name in ("hyperparameters", "resources")),
        Rule(
            "(oldSelf.suspend && self.suspend) || (has(self.placement) == has(oldSelf.placement)"
            " && (!has(self.placement) || self.placement == oldSelf.placement))",
            _SUSPENDED_ONLY.format(field="placement"),
            field_path=".placement",
            reason="FieldValueForbidden",
        ),
        Rule(
            "!self.dryRun || oldSelf.dryRun",
            "dryRun can be turned off (the job then trains) but not on once the job exists; "
            "create a new job to estimate",
            field_path=".dryRun",
            reason="FieldValueForbidden",
        ),
    )

    base_model: Annotated[BaseModelSource, Field(json_schema_extra=immutable("baseModel"))]
    training_files: Annotated[
        list[TrainingFile],
        Field(min_length=1, max_length=64, json_schema_extra=immutable("trainingFiles")),
    ]
    validation_files: Annotated[list[ValidationFile], Field(max_length=64)] | None = None
    method: Annotated[Method, Field(json_schema_extra=immutable("method"))] = Field(
        default_factory=Method
    )
    hyperparameters: Hyperparameters
    resources: TrainingResources = Field(default_factory=TrainingResources)
    placement: JobPlacement | None = None
    output: Annotated[Output, Field(json_schema_extra=immutable("output"))]
    auto_deploy: AutoDeploy | None = None
    suspend: bool = Field(default=False, description="Stop (keeping checkpoints) or hold.")
    priority: Annotated[int, Field(ge=-1000, le=1000)] = Field(
        default=0, description="Higher runs first within the tenant's quota."
    )
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    dry_run: bool = Field(default=False, description="Validate and estimate only.")


FineTuneJobPhase = Literal[
    "Pending",
    "Validating",
    "Queued",
    "Running",
    "Suspended",
    "Succeeded",
    "Failed",
    "FailedValidation",
    "Cancelled",
]


class Progress(ApiModel):
    step: int = 0
    total_steps: int | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    eta: datetime | None = None


class GpuEstimate(ApiModel):
    gpu_type: str
    tokens_per_second_per_gpu: float
    duration_seconds: float
    gpu_hours: float
    cost: float | None = None
    currency: str | None = None


ModelParamsSource = Literal["Read", "Given", "Assumed"]


class Estimate(ApiModel):
    """The dry run's figures, with the base model size and any assumption they rest on."""

    dataset_tokens: int
    train_tokens: int
    steps: int
    epochs: float
    per_gpu_type: list[GpuEstimate] | None = None
    model_params: int | None = Field(
        default=None, description="Parameters of the base model the figures were computed for."
    )
    model_params_source: ModelParamsSource | None = Field(
        default=None,
        description="Read: counted from the base model's config.json; Given: set by the user "
        "(`tramontane finetune estimate --model-params`); Assumed: the size could not be read "
        "and a default was used (see assumptions).",
    )
    assumptions: list[str] | None = Field(
        default=None,
        description="What the estimate assumed and why, in words; absent when nothing was.",
    )


class Checkpoint(ApiModel):
    step: int
    uri: str
    time: datetime | None = None


class AdapterStatus(ApiModel):
    uri: str
    model_deployment: str | None = None
    adapter_name: str | None = None


class FineTuneJobStatus(ApiModel):
    phase: FineTuneJobPhase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    cluster: str | None = None
    ray_job: str | None = None
    queue_position: int | None = None
    progress: Progress | None = None
    estimate: Estimate | None = None
    checkpoints: list[Checkpoint] | None = None
    adapter: AdapterStatus | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    retries: int | None = None


class FineTuneJob(Resource):
    """A fine-tune of a Mistral model on a tenant's chat datasets."""

    KIND_INFO: ClassVar[KindInfo] = KindInfo(
        kind="FineTuneJob",
        plural="finetunejobs",
        singular="finetunejob",
        scope="Namespaced",
        short_names=("ftj",),
        printer_columns=(
            PHASE_COLUMN,
            PrinterColumn("Progress", "number", ".status.progress.percent", "Percent done"),
            PrinterColumn("Step", "integer", ".status.progress.step"),
            PrinterColumn("Loss", "number", ".status.progress.trainLoss"),
            PrinterColumn("GPUs", "integer", ".spec.resources.gpusPerWorker", "GPUs per worker"),
            PrinterColumn("Cluster", "string", ".status.cluster"),
            PrinterColumn("Queue", "integer", ".status.queuePosition", priority=1),
            AGE_COLUMN,
        ),
    )

    kind: Literal["FineTuneJob"] = "FineTuneJob"
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
