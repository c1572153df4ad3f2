"""What the operator renders into a fine-tuning RayJob, and what the trainer writes back.

`TrainConfig` is the trainer's whole input; the operator builds it from a FineTuneJob and puts
`entrypoint(config)` in the RayJob. The trainer writes, under `output_uri`:

    progress.json                       TrainProgress: step, losses, tokens/s, ETA, checkpoints
    checkpoints/step-00000100/          adapter + optimizer state; COMPLETE is written last
    adapter/                            the final PEFT adapter (adapter_config.json,
                                        adapter_model.safetensors) and tramontane_adapter.json

`progress.json` is where the operator reads progress (phase Running -> status.progress); the
adapter directory loads directly in the reference engine and in vLLM. Rank 0 also prints every
progress update as one stdout line, `progress_line(progress)`, which reaches the log of KubeRay's
submitter pod: the operator reads it there (`last_progress`) when it cannot read the output URI
(a `pvc://` claim it does not mount).
Importable without torch or ray.
"""

from __future__ import annotations

import base64
import json
import shlex
from datetime import datetime
from typing import Annotated, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROGRESS_FILE = "progress.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
ADAPTER_MANIFEST = "tramontane_adapter.json"
COMPLETE_MARKER = "COMPLETE"
ENTRYPOINT_MODULE = "tramontane_workers.train"
PROGRESS_LINE_PREFIX = "TRAMONTANE_PROGRESS "
PROGRESS_LINE_CHECKPOINTS = 5  # the newest checkpoints a progress line carries (status keeps 5)


M = TypeVar("M", bound=BaseModel)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingFile(_Strict):
    uri: str
    weight: Annotated[float, Field(gt=0)] = 1.0


class LoraSettings(_Strict):
    rank: Annotated[int, Field(ge=1, le=512)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32.0  # peft takes an int; rounded there
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class TrainConfig(_Strict):
    """Everything one fine-tuning run needs; hyperparameter names follow the FineTuneJob API."""

    job_name: Annotated[str, Field(min_length=1, max_length=128)] = "finetune"
    base_model_uri: str = Field(description="HF-format checkpoint (file://, pvc://, hf://, ...).")
    base_model_name: str | None = Field(default=None, description="For the adapter manifest.")
    training_files: Annotated[list[TrainingFile], Field(min_length=1)]
    validation_files: list[str] = Field(default_factory=list)
    output_uri: str
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training_steps: Annotated[int, Field(ge=1)] | None = None
    epochs: Annotated[float, Field(gt=0)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4
    warmup_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.1
    sequence_length: Annotated[int, Field(ge=8)] = 4096
    batch_size: Annotated[int, Field(ge=1)] = Field(
        default=8, description="Sequences per optimizer step, all workers together."
    )
    checkpoint_every_steps: Annotated[int, Field(ge=1)] = 100
    eval_every_steps: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Validation loss cadence; default: checkpoint_every_steps."
    )
    seed: int = 0
    num_workers: Annotated[int, Field(ge=1)] = 1
    use_gpu: bool = False
    cpus_per_worker: Annotated[int, Field(ge=1)] = 1
    max_failures: Annotated[int, Field(ge=0)] = Field(
        default=3, description="Worker-group restarts Ray Train attempts (each resumes)."
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Self:
        if (self.training_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of training_steps or epochs")
        if self.batch_size < self.num_workers:
            raise ValueError("batch_size must be at least num_workers (one sequence each)")
        return self

    @property
    def eval_every(self) -> int:
        return self.eval_every_steps or self.checkpoint_every_steps

    def model_shape(self) -> dict[str, object]:
        """Fields a checkpoint must agree with to be resumed from."""
        return {"base_model_uri": self.base_model_uri, "lora": self.lora.model_dump()}


def entrypoint(config: TrainConfig) -> str:
    return module_entrypoint(ENTRYPOINT_MODULE, config)


def config_from_b64(payload: str) -> TrainConfig:
    return model_from_b64(TrainConfig, payload)


def module_entrypoint(module: str, config: BaseModel) -> str:
    """`python -m <module> --config-b64 ...`, a RayJob entrypoint: the config travels
    base64-encoded, no quoting pitfalls."""
    payload = base64.urlsafe_b64encode(config.model_dump_json().encode()).decode()
    return shlex.join(["python", "-m", module, "--config-b64", payload])


def model_from_b64(model: type[M], payload: str) -> M:
    return model.model_validate_json(base64.urlsafe_b64decode(payload.encode()))


class CheckpointRecord(_Strict):
    step: int
    uri: str
    time: datetime


class TrainProgress(_Strict):
    """progress.json: written by rank 0 at every report; read by the operator."""

    state: Literal["running", "succeeded", "failed"] = "running"
    step: int = 0
    total_steps: int
    percent: float = 0.0
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_second: float | None = None
    eta: datetime | None = None
    attempt: int = 1
    resumed_from_step: int | None = None
    checkpoints: list[CheckpointRecord] = Field(default_factory=list)
    adapter_uri: str | None = None
    message: str | None = None
    updated: datetime


def progress_line(progress: TrainProgress) -> str:
    """One log line carrying `progress` (compact JSON, newest checkpoints only, no newline)."""
    recent = sorted(progress.checkpoints, key=lambda c: c.step)[-PROGRESS_LINE_CHECKPOINTS:]
    trimmed = progress.model_copy(update={"checkpoints": recent})
    return PROGRESS_LINE_PREFIX + trimmed.model_dump_json(exclude_none=True)


def last_progress(log_text: str) -> TrainProgress | None:
    """The progress of the last line of `log_text` that carries a whole, valid one; None if none."""
    return last_line(log_text, PROGRESS_LINE_PREFIX, TrainProgress)


def last_line(log_text: str, prefix: str, model: type[M]) -> M | None:
    """The `model` carried by the last line of `log_text` with `prefix` and a whole, valid
    payload; None if none.

    The prefix may follow other text on its line (Ray prefixes the lines it forwards from a
    worker with `(RayTrainWorker pid=...)`) and the JSON may be followed by more (Ray's
    `[repeated 2x across cluster]`); half lines (a log tail cut mid-line), garbage and every
    other output are skipped."""
    decoder = json.JSONDecoder()
    for line in reversed(log_text.splitlines()):
        start = line.rfind(prefix)
        if start < 0:
            continue
        try:
            payload, _ = decoder.raw_decode(line, start + len(prefix))
            return model.model_validate(payload)
        except ValueError:  # JSON or pydantic's ValidationError: not a whole payload
            continue
    return None


class AdapterManifest(_Strict):
    """tramontane_adapter.json beside the PEFT files."""

    base_model: str
    base_model_uri: str
    rank: int
    alpha: float
    target_modules: list[str]
    steps: int
    final_train_loss: float | None
    final_valid_loss: float | None
    train_tokens: int
    created: datetime
