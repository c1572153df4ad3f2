"""Evaluation: score a model (a ModelDeployment's base model, optionally with a LoRA adapter)
on a held-out chat dataset, against thresholds, optionally relative to a baseline.

The operator renders the evaluator's `EvalConfig` (`tramontane_workers.contract.eval_config`)
into a KubeRay RayJob on one GPU pool's worth of the ModelDeployment's hardware (admitted
through the tenant's quota like a FineTuneJob), reads the scores it prints, and decides
pass/fail against `spec.metrics` itself. Every spec change (its generation) is a new run;
`spec.runId` changes nothing else, so setting it to a new value (a CI build number) re-runs
the same evaluation.

A FineTuneJob's deployment gate (`spec.autoDeploy.evaluation`) creates one of these, owned by
the job, and deploys the adapter only when it passes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from tramontane_workers.contract.eval_config import LOWER_IS_BETTER, MetricName

from .common import (
    AGE_COLUMN,
    PHASE_COLUMN,
    ApiModel,
    Conditions,
    DataUri,
    KindInfo,
    LocalObjectReference,
    ModelUri,
    PrinterColumn,
    Resource,
    Rule,
    config_with_rules,
    list_map,
)

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# The RayJob (and KubeRay's submitter Job, its RayCluster) derive their names from this one.
MAX_NAME_LENGTH = 47
LOWER_IS_BETTER_TEXT = ", ".join(sorted(LOWER_IS_BETTER))


class EvaluationModel(ApiModel):
    """A model to score: the base model of a ModelDeployment (its runtime and GPU type too),
    plus at most one adapter: one it serves by name, a URI, or a FineTuneJob's output."""

    model_config = config_with_rules(
        Rule(
            "(has(self.adapter) ? 1 : 0) + (has(self.adapterUri) ? 1 : 0) + "
            "(has(self.fineTuneJobRef) ? 1 : 0) <= 1",
            "set at most one of adapter, adapterUri or fineTuneJobRef",
        )
    )

    model_deployment_ref: LocalObjectReference = Field(
        description="The ModelDeployment whose base model, runtime and GPU type are used."
    )
    adapter: (
        Annotated[str, Field(min_length=1, max_length=128, pattern=ADAPTER_NAME_PATTERN)] | None
    ) = Field(default=None, description="An adapter the ModelDeployment serves (its resolved URI).")
    adapter_uri: ModelUri | None = Field(default=None, description="A PEFT adapter directory.")
    fine_tune_job_ref: LocalObjectReference | None = Field(
        default=None,
        description="A succeeded FineTuneJob's adapter output (deployed or not).",
    )


class EvaluationDataset(ApiModel):
    uri: DataUri = Field(
        description="Mistral chat JSONL; each line's last assistant message is the expected "
        "answer (text or tool call)."
    )


class MetricThreshold(ApiModel):
    """One metric to compute, with what it must reach (none: reported, never failing)."""

    model_config = config_with_rules(
        Rule(
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            "min must not exceed max",
            field_path=".min",
        )
    )

    name: MetricName = Field(
        description=f"The evaluator's metric; lower is better for {LOWER_IS_BETTER_TEXT}."
    )
    min: float | None = Field(default=None, description="Pass only when score >= min.")
    max: float | None = Field(default=None, description="Pass only when score <= max.")
    min_delta: float | None = Field(
        default=None,
        description="Pass only when the score improves on the baseline by at least this "
        "(score - baseline, or baseline - score for lower-is-better metrics); needs a baseline.",
    )


MetricThresholds = Annotated[
    list[MetricThreshold], Field(min_length=1, max_length=16, json_schema_extra=list_map("name"))
]


class Generation(ApiModel):
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = Field(
        default=256, description="Tokens generated per answer at most."
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8


class EvaluationSpec(ApiModel):
    model_config = config_with_rules(
        Rule(
            "has(self.baseline) || self.metrics.all(m, !has(m.minDelta))",
            "metrics[].minDelta compares with a baseline: set spec.baseline",
            field_path=".metrics",
        ),
    )

    target: EvaluationModel
    baseline: EvaluationModel | None = Field(
        default=None, description="Scored the same way; deltas and minDelta compare with it."
    )
    dataset: EvaluationDataset
    metrics: MetricThresholds
    generation: Generation = Field(default_factory=Generation)
    max_samples: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Score only the first N lines."
    )
    failing_samples: Annotated[int, Field(ge=0, le=50)] = Field(
        default=5, description="Failing samples shown in the status at most."
    )
    run_id: Annotated[str, Field(max_length=128)] | None = Field(
        default=None,
        description="Free text; changing it runs the evaluation again with the same spec "
        "(every spec change does).",
    )
    priority: Annotated[int, Field(ge=-1000, le=1000)] = Field(
        default=0, description="Higher is admitted first within the tenant's quota."
    )


EvaluationPhase = Literal["Pending", "Queued", "Running", "Passed", "Failed", "Error"]


class MetricResult(ApiModel):
    metric: MetricName
    score: float | None = None
    baseline: float | None = None
    delta: float | None = Field(default=None, description="score - baseline.")
    threshold: str | None = Field(default=None, description="What it must reach, e.g. >= 0.8.")
    passed: bool | None = Field(default=None, description="None: no threshold, or no score.")
    samples: int | None = None


class FailingSample(ApiModel):
    line: int
    input: str
    expected: str
    got: str


class EvaluationStatus(ApiModel):
    phase: EvaluationPhase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    cluster: str | None = None
    ray_job: str | None = None
    queue_position: int | None = None
    results: list[MetricResult] | None = None
    samples: int | None = Field(default=None, description="Samples in the dataset scored.")
    done: int | None = Field(default=None, description="Samples scored so far.")
    failing_samples: list[FailingSample] | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    message: str | None = None


class Evaluation(Resource):
    """Scores of a model on a dataset, against thresholds, optionally against a baseline."""

    KIND_INFO: ClassVar[KindInfo] = KindInfo(
        kind="Evaluation",
        plural="evaluations",
        singular="evaluation",
        scope="Namespaced",
        short_names=("ev",),
        printer_columns=(
            PHASE_COLUMN,
            PrinterColumn(
                "Passed", "string", '.status.conditions[?(@.type=="Passed")].status', "Passed"
            ),
            PrinterColumn("Model", "string", ".spec.target.modelDeploymentRef.name"),
            PrinterColumn("Samples", "integer", ".status.samples"),
            PrinterColumn("Cluster", "string", ".status.cluster"),
            PrinterColumn("Queue", "integer", ".status.queuePosition", priority=1),
            PrinterColumn("Run", "string", ".spec.runId", priority=1),
            AGE_COLUMN,
        ),
        root_rules=(
            Rule(
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(its RayJob and KubeRay's objects derive longer names from it)",
                field_path=".metadata.name",
            ),
        ),
    )

    kind: Literal["Evaluation"] = "Evaluation"
    spec: EvaluationSpec
    status: EvaluationStatus | None = None
