"""Dry-run estimate of a fine-tune: steps, train tokens, duration, GPU-hours and cost per GPU type.

Pure functions over numbers the control plane already has: the validated dataset (tokens and
conversations), the hyperparameters, the base model's parameter count and the cluster's price
per GPU-hour. Nothing here measures anything; the throughput assumptions are explicit:

    tokens/s per GPU = peak dense bf16 FLOP/s x MFU / FLOPs per trained token

FLOPs per trained token are 4N for LoRA (forward 2N, backward through the frozen base 2N,
adapter weights negligible) and 6N for a full fine-tune, N the base model's parameters;
attention's quadratic term is ignored (small below ~8k tokens for 7B-class models). MFU values
are typical of well-tuned PyTorch fine-tuning without FlashAttention-3-class kernels, taken
conservatively. Data parallelism across GPUs is assumed at `DATA_PARALLEL_EFFICIENCY`.

The trainer puts one conversation per sequence (truncated to `sequence_length`, no packing), so
a step trains `batch_size` conversations and an epoch is ceil(conversations / batch_size) steps.
The table is documented in docs/finetuning.md; keep both in step.

The base model's size is the one input that may be missing: where its config.json cannot be
read (an `hf://` model the control plane does not fetch, a private bucket, a broken file),
`ModelParams.of` falls back to `ASSUMED_MODEL_PARAMS` and says so in words; the estimate
carries the number it used, where it came from, and that sentence, never a silent guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

DATA_PARALLEL_EFFICIENCY = 0.9
FLOPS_PER_PARAM_PER_TOKEN = {"lora": 4.0, "full": 6.0}
# Bytes of GPU memory per parameter: bf16 weights for LoRA; weights, grads and Adam (fp32
# master + two moments) for a full fine-tune. Activations get the remaining headroom.
BYTES_PER_PARAM = {"lora": 2.0, "full": 16.0}
MEMORY_HEADROOM = 0.8  # fraction of GPU memory the weights (and optimizer) may take
# The base model size assumed when it cannot be read: Mistral 7B v0.3 (32,768 vocabulary).
ASSUMED_MODEL_PARAMS = 7_248_023_552
ASSUMED_MODEL_NAME = "Mistral 7B v0.3"

# Read: counted from the model's config.json; Given: stated by the user; Assumed: unknown.
ModelParamsSource = Literal["Read", "Given", "Assumed"]


def params_in_words(params: float) -> str:
    """A parameter count as people write it: 7.2B, 24B, 4.3M."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if params >= scale:
            value = params / scale
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{params:.0f}"


@dataclass(frozen=True, slots=True)
class ModelSizeRead:
    """What reading a base model's config.json gave: its parameters, or why there are none."""

    uri: str
    params: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModelParams:
    """The base model size an estimate uses, where it came from, and any assumption in words."""

    value: float
    source: ModelParamsSource
    assumption: str | None = None

    @classmethod
    def of(cls, read: ModelSizeRead | None) -> ModelParams:
        """The size that was read, else `ASSUMED_MODEL_PARAMS` with the reason it was not."""
        if read is not None and read.params is not None and read.params > 0:
            return cls(read.params, "Read")
        if read is None:
            return cls.assumed("no base model URI")
        return cls.assumed(f"could not read {read.uri}: {read.error or 'unknown error'}")

    @classmethod
    def assumed(cls, why: str) -> ModelParams:
        """`ASSUMED_MODEL_PARAMS`, with `why` the size is unknown."""
        return cls(
            float(ASSUMED_MODEL_PARAMS),
            "Assumed",
            f"base model size unknown ({why}); assumed "
            f"{params_in_words(ASSUMED_MODEL_PARAMS)} parameters ({ASSUMED_MODEL_NAME})",
        )


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Assumed training speed of one accelerator type."""

    name: str
    peak_tflops: float  # dense bf16 (fp16 for T4), per GPU, from the vendor's datasheet
    mfu: float  # model FLOPs utilisation assumed for LoRA fine-tuning
    memory_gib: float

    def tokens_per_second(self, model_params: float, method: str) -> float:
        flops_per_token = FLOPS_PER_PARAM_PER_TOKEN[method] * model_params
        return self.peak_tflops * 1e12 * self.mfu / flops_per_token

    def fits(self, model_params: float, method: str) -> bool:
        needed = BYTES_PER_PARAM[method] * model_params
        return needed <= self.memory_gib * 2**30 * MEMORY_HEADROOM


# Order matters when matching names: longer / more specific keys first.
GPU_PROFILES: tuple[GpuProfile, ...] = (
    GpuProfile("H200", peak_tflops=989.0, mfu=0.40, memory_gib=141.0),
    GpuProfile("H100", peak_tflops=989.0, mfu=0.35, memory_gib=80.0),
    GpuProfile("A100", peak_tflops=312.0, mfu=0.45, memory_gib=80.0),
    GpuProfile("A10", peak_tflops=125.0, mfu=0.35, memory_gib=24.0),
    GpuProfile("L4", peak_tflops=121.0, mfu=0.30, memory_gib=24.0),
    GpuProfile("T4", peak_tflops=65.0, mfu=0.25, memory_gib=16.0),
    # A 2-socket server CPU (~64 cores, AVX-512, fp32): for tiny models and tests only.
    GpuProfile("CPU", peak_tflops=4.0, mfu=0.10, memory_gib=256.0),
)


def gpu_profile(gpu_type: str) -> GpuProfile | None:
    """The profile a cluster's GPU type name refers to: 'A100-80GB', 'nvidia-h100-sxm' -> H100."""
    upper = gpu_type.upper()
    for profile in GPU_PROFILES:
        if re.search(rf"(^|[^A-Z0-9]){profile.name}([^0-9]|$)", upper):
            return profile
    return None


class GpuEstimate(BaseModel):
    """Names follow the FineTuneJob status (`status.estimate.perGpuType[]`) plus `fits`."""

    gpu_type: str
    tokens_per_second_per_gpu: float
    duration_seconds: float
    gpu_hours: float
    cost: float | None = None
    currency: str | None = None
    fits_in_memory: bool = True


class Estimate(BaseModel):
    dataset_tokens: int
    train_tokens: int
    steps: int
    epochs: float
    gpus: int
    per_gpu_type: list[GpuEstimate] = Field(default_factory=list)
    model_params: int
    model_params_source: ModelParamsSource
    assumptions: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TrainingShape:
    """The hyperparameters that decide how much is trained. Set training_steps or epochs."""

    batch_size: int
    sequence_length: int
    training_steps: int | None = None
    epochs: float | None = None


def plan_steps(conversations: int, tokens: int, shape: TrainingShape) -> tuple[int, float, int]:
    """(steps, epochs, train tokens) for a dataset of `conversations` holding `tokens`."""
    if conversations <= 0:
        raise ValueError("the dataset has no valid conversation")
    if (shape.training_steps is None) == (shape.epochs is None):
        raise ValueError("set exactly one of training_steps or epochs")
    steps_per_epoch = math.ceil(conversations / shape.batch_size)
    if shape.epochs is not None:
        steps = max(1, math.ceil(shape.epochs * steps_per_epoch))
        epochs = shape.epochs
    else:
        steps = shape.training_steps or 0
        epochs = steps * shape.batch_size / conversations
    per_sequence = min(tokens / conversations, shape.sequence_length)
    return steps, round(epochs, 4), round(steps * shape.batch_size * per_sequence)


def estimate(
    *,
    conversations: int,
    dataset_tokens: int,
    shape: TrainingShape,
    model_params: float | ModelParams,
    method: Literal["lora", "full"] = "lora",
    gpus: int = 1,
    gpu_types: list[str] | None = None,
    price_per_gpu_hour: dict[str, float] | None = None,
    currency: str | None = None,
) -> Estimate:
    """Estimate for each GPU type (default: every known profile); cost where a price is known.
    A bare number of `model_params` is one the caller was given."""
    if gpus < 1:
        raise ValueError("gpus must be at least 1")
    model = (
        model_params
        if isinstance(model_params, ModelParams)
        else ModelParams(float(model_params), "Given")
    )
    steps, epochs, train_tokens = plan_steps(conversations, dataset_tokens, shape)
    prices = price_per_gpu_hour or {}
    names = gpu_types if gpu_types is not None else [p.name for p in GPU_PROFILES]
    per_type: list[GpuEstimate] = []
    for name in names:
        profile = gpu_profile(name)
        if profile is None:
            continue
        per_gpu = profile.tokens_per_second(model.value, method)
        scaling = 1.0 if gpus == 1 else DATA_PARALLEL_EFFICIENCY
        duration = train_tokens / (per_gpu * gpus * scaling)
        gpu_hours = duration * gpus / 3600
        price = prices.get(name)
        per_type.append(
            GpuEstimate(
                gpu_type=name,
                tokens_per_second_per_gpu=round(per_gpu, 1),
                duration_seconds=round(duration, 1),
                gpu_hours=round(gpu_hours, 3),
                cost=None if price is None else round(gpu_hours * price, 2),
                currency=currency if price is not None else None,
                fits_in_memory=profile.fits(model.value, method),
            )
        )
    return Estimate(
        dataset_tokens=dataset_tokens,
        train_tokens=train_tokens,
        steps=steps,
        epochs=epochs,
        gpus=gpus,
        per_gpu_type=per_type,
        model_params=round(model.value),
        model_params_source=model.source,
        assumptions=[model.assumption] if model.assumption else [],
    )


def params_from_hf_config(config: Mapping[str, object]) -> int:
    """Parameter count of a Mistral-style decoder from its Hugging Face config.json."""

    def num(key: str, default: int | None = None) -> int:
        value = config.get(key, default)
        if not isinstance(value, int):
            raise ValueError(f"config.json: {key} must be an integer, got {value!r}")
        return value

    hidden, layers = num("hidden_size"), num("num_hidden_layers")
    heads = num("num_attention_heads")
    kv_heads = num("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    if not isinstance(head_dim, int):
        raise ValueError(f"config.json: head_dim must be an integer, got {head_dim!r}")
    inter, vocab = num("intermediate_size"), num("vocab_size")
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden
