"""What the operator renders into an evaluation RayJob, and what the evaluator writes back.

`EvalConfig` is the evaluator's whole input; the operator builds it from an `Evaluation` (or
from a FineTuneJob's deployment gate) and puts `entrypoint(config)` in the RayJob. The
evaluator scores one target (a base model, optionally with a LoRA adapter loaded from its URI,
with the same engine code as serving) and, when given, a baseline, on one Mistral chat JSONL
dataset whose last assistant message of each line is the expected answer (text or tool call).

It reports with `EvalResult`: as one stdout line per update, `result_line(result)`, which
reaches the log of KubeRay's submitter pod where the operator reads it (`last_result`), and,
when `output_uri` is set, as `result.json` under it. Scores only: pass/fail against the
Evaluation's thresholds is the operator's (pure) decision, so a re-run with other thresholds
needs no new run.

Metric names are the API's (`Evaluation.spec.metrics[].name`):
- `exactMatch`: the answer equals the expected text (after stripping surrounding whitespace);
- `normalizedMatch`: equal after lowercasing, removing punctuation and articles (a, an, the)
  and collapsing whitespace (SQuAD's normalisation);
- `tokenF1`: SQuAD token F1 of the normalised texts, averaged over samples;
- `toolCallAccuracy`: over samples whose expected answer is a tool call, the share whose
  calls match (same function names in order, arguments equal as parsed JSON);
- `jsonSchemaValid`: over samples with a `response_format` of type `json_schema`, the share
  whose answer parses as JSON and validates against the schema;
- `validationLoss`: mean cross-entropy of the expected answer's tokens (teacher forcing), as
  Mistral's fine-tuning API reports it;
- `meanTokenAccuracy`: share of expected-answer tokens that are the argmax prediction.

Importable without torch or ray.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .train_config import last_line, model_from_b64, module_entrypoint

ENTRYPOINT_MODULE = "tramontane_workers.evaluate"
RESULT_FILE = "result.json"
RESULT_LINE_PREFIX = "TRAMONTANE_EVAL "

MetricName = Literal[
    "exactMatch",
    "normalizedMatch",
    "tokenF1",
    "toolCallAccuracy",
    "jsonSchemaValid",
    "validationLoss",
    "meanTokenAccuracy",
]
METRIC_NAMES: tuple[MetricName, ...] = (
    "exactMatch",
    "normalizedMatch",
    "tokenF1",
    "toolCallAccuracy",
    "jsonSchemaValid",
    "validationLoss",
    "meanTokenAccuracy",
)
# Metrics where lower is better (a threshold on them is a maximum).
LOWER_IS_BETTER: frozenset[MetricName] = frozenset({"validationLoss"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalTarget(_Strict):
    """One model to score: a base checkpoint and optionally a LoRA adapter on top of it."""

    label: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="How reports name it, e.g. `tiny-mistral:qa` or `base`."
    )
    base_model_uri: str = Field(description="HF-format checkpoint (file://, pvc://, hf://, ...).")
    adapter_uri: str | None = Field(
        default=None, description="A PEFT adapter directory (a FineTuneJob's `adapter/`)."
    )


class EvalConfig(_Strict):
    """Everything one evaluation run needs."""

    name: Annotated[str, Field(min_length=1, max_length=253)] = "evaluation"
    dataset_uri: str
    target: EvalTarget
    baseline: EvalTarget | None = None
    metrics: Annotated[list[MetricName], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 256
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    max_samples: Annotated[int, Field(ge=1)] | None = None
    failing_samples: Annotated[int, Field(ge=0, le=50)] = 5
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    output_uri: str | None = None
    use_gpu: bool = False
    seed: int = 0


def entrypoint(config: EvalConfig) -> str:
    """The RayJob entrypoint command (`python -m tramontane_workers.evaluate --config-b64`)."""
    return module_entrypoint(ENTRYPOINT_MODULE, config)


def config_from_b64(payload: str) -> EvalConfig:
    return model_from_b64(EvalConfig, payload)


class MetricScore(_Strict):
    metric: MetricName
    score: float | None = Field(
        default=None, description="None when no sample applies (e.g. no tool-call samples)."
    )
    samples: int = Field(default=0, description="Samples the score is computed over.")


class FailingSample(_Strict):
    """A sample the target got wrong (exact/normalised match, or tool call), for the status."""

    line: int = Field(description="1-based line of the dataset.")
    input: str = Field(description="The last user message, shortened.")
    expected: str
    got: str


class EvalResult(_Strict):
    """One update of a run; the last one (state succeeded or failed) is the result."""

    state: Literal["running", "succeeded", "failed"] = "running"
    samples: int = Field(default=0, description="Samples in the dataset (after max_samples).")
    done: int = Field(default=0, description="Samples scored so far (target and baseline).")
    target: list[MetricScore] = Field(default_factory=list)
    baseline: list[MetricScore] = Field(default_factory=list)
    failing_samples: list[FailingSample] = Field(default_factory=list)
    samples_per_second: float | None = None
    message: str | None = None
    updated: datetime


def result_line(result: EvalResult) -> str:
    """One log line carrying `result` (compact JSON, no newline)."""
    return RESULT_LINE_PREFIX + result.model_dump_json(exclude_none=True)


def last_result(log_text: str) -> EvalResult | None:
    """The result of the last line of `log_text` that carries a whole, valid one; None if none."""
    return last_line(log_text, RESULT_LINE_PREFIX, EvalResult)
