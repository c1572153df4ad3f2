"""The engine interface: token ids in, token ids out, streamed; adapters by name.

Chat encoding, validation, detokenisation, stop strings and tool-call parsing live above the
engines (`tramontane_workers.chat`), so both engines behave the same for the same tokens.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` is greedy; `seed` makes sampling repeatable.

    `json_schema` (JSON Schema text) constrains the output: only tokens that keep it a prefix of
    a JSON document matching the schema are sampled, and the sequence stops with "stop" as soon
    as the document is complete (or with "length" at `max_tokens`, possibly incomplete).
    """

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    json_schema: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate; `adapter` names a loaded LoRA adapter or None for the base."""

    request_id: str
    prompt_tokens: list[int]
    sampling: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class TokenStep:
    """New token ids of one sequence; the last step carries `finish_reason`."""

    token_ids: list[int]
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class ForcedRequest:
    """Teacher forcing: score `target_tokens` as the continuation of `prompt_tokens`."""

    prompt_tokens: list[int]
    target_tokens: list[int]
    adapter: str | None = None


@dataclass(frozen=True)
class ForcedScores:
    """Per target token: its log-probability given everything before it, and whether it was
    the model's most likely token there (the argmax)."""

    logprobs: list[float]
    argmax_hits: list[bool]


@dataclass(frozen=True)
class EngineStats:
    """Load of one engine: sequences decoding now, sequences waiting for a slot."""

    running: int
    waiting: int
    max_batch_size: int


class Engine(abc.ABC):
    """One model on one replica. Implementations batch concurrent `generate` calls."""

    max_model_len: int

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        """Stream the tokens of `request`. Closing the iterator early cancels the sequence."""

    @abc.abstractmethod
    async def add_adapter(self, name: str, path: Path) -> None:
        """Load the LoRA adapter at `path` under `name` (raises AdapterUnavailable)."""

    @abc.abstractmethod
    async def remove_adapter(self, name: str) -> None:
        """Unload adapter `name`; sequences already using it finish first or are cancelled."""

    @abc.abstractmethod
    def loaded_adapters(self) -> set[str]:
        """Names of the adapters requests may use now."""

    @abc.abstractmethod
    async def score(self, requests: list[ForcedRequest]) -> list[ForcedScores]:
        """Teacher-forced scores of each request, with the same weights `generate` uses."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Current load."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop background work and free the model."""
