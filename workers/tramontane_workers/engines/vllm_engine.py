"""The vLLM engine (GPU): vLLM's async engine behind the token-level `Engine` interface.

vLLM is imported lazily. Without vLLM or without a GPU, construction raises `EngineUnavailable`
with the reason; nothing falls back to another engine. Mistral-format checkpoints are loaded
with `tokenizer_mode`, `config_format` and `load_format` = "mistral". LoRA is enabled with
`max_loras` from the spec. Prompts arrive as token ids from the shared chat layer, which also
parses Mistral tool calls (`[TOOL_CALLS]`), so both engines answer the same way.

A JSON constraint (`SamplingParams.json_schema`, the same schema the reference engine compiles)
goes to vLLM's own structured output (xgrammar by default): the SamplingParams field
`structured_outputs=StructuredOutputsParams(json=...)` in recent vLLM, or
`guided_decoding=GuidedDecodingParams(json=...)` in older ones (removed in vLLM 0.12).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncGenerator, Collection
from pathlib import Path
from typing import Any, Literal

from tramontane_workers.engines.base import (
    Engine,
    EngineStats,
    FinishReason,
    ForcedRequest,
    ForcedScores,
    GenerationRequest,
    TokenStep,
)
from tramontane_workers.errors import AdapterUnavailable, EngineUnavailable, InvalidRequest

# vLLM's SamplingParams field for structured output, newest first, with its parameters class.
STRUCTURED_OUTPUT_APIS = (
    ("structured_outputs", "StructuredOutputsParams"),
    ("guided_decoding", "GuidedDecodingParams"),
)


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM engine cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "engine vllm: the vllm package is not installed (pip install 'tramontane[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "engine vllm: needs an NVIDIA GPU, and none is visible to this process"
    return None


def engine_args(
    model_dir: Path,
    *,
    checkpoint_format: Literal["mistral", "hf"],
    served_model_name: str,
    dtype: str,
    max_model_len: int | None,
    tensor_parallel_size: int,
    max_loras: int,
    max_lora_rank: int = 64,
) -> dict[str, Any]:
    """Keyword arguments of vLLM's `AsyncEngineArgs` for one checkpoint (pure)."""
    args: dict[str, Any] = {
        "model": str(model_dir),
        "served_model_name": served_model_name,
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": max_lora_rank,
    }
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    # Tramontane checkpoints always carry a mistral-common tokenizer (tekken.json or
    # tokenizer.model.v*), whatever the weights' format.
    args["tokenizer_mode"] = "mistral"
    if checkpoint_format == "mistral":
        args.update(config_format="mistral", load_format="mistral")
    return args


def structured_output_api(module_names: Collection[str]) -> tuple[str, str]:
    """(SamplingParams field, params class) of the vLLM whose `vllm.sampling_params` defines
    `module_names`; EngineUnavailable when it has neither API."""
    for field_name, class_name in STRUCTURED_OUTPUT_APIS:
        if class_name in module_names:
            return field_name, class_name
    raise EngineUnavailable(
        "engine vllm: this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams; "
        "response_format json needs a vLLM with structured output"
    )


def structured_output_kwargs(json_schema: str | None) -> dict[str, Any]:
    """Keyword arguments of vLLM's structured-output params for our constraint ({} when free)."""
    return {} if json_schema is None else {"json": json.loads(json_schema)}


class VLLMEngine(Engine):
    """vLLM's AsyncLLMEngine; continuous batching and LoRA slots are vLLM's own."""

    def __init__(self, **kwargs: Any) -> None:
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(reason)
        import vllm.sampling_params as vllm_sampling
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        field_name, class_name = structured_output_api(dir(vllm_sampling))
        self._structured: tuple[str, Any] = (field_name, getattr(vllm_sampling, class_name))
        self._args = engine_args(**kwargs)
        self._engine: Any = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**self._args))
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self._adapters: dict[str, tuple[int, Path]] = {}
        self._next_id = 1
        self._running = 0

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        lora = None
        if request.adapter is not None:
            if request.adapter not in self._adapters:
                raise AdapterUnavailable(f"adapter {request.adapter!r} is not loaded")
            lora_id, path = self._adapters[request.adapter]
            lora = LoRARequest(request.adapter, lora_id, str(path))
        s = request.sampling
        constraint: dict[str, Any] = {}
        if s.json_schema is not None:
            field_name, params_class = self._structured
            constraint[field_name] = params_class(**structured_output_kwargs(s.json_schema))
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            stop_token_ids=sorted(s.stop_token_ids),
            detokenize=False,  # the chat layer detokenises, for both engines alike
            **constraint,
        )
        seen, finished = 0, False
        self._running += 1
        try:
            outputs = self._engine.generate(
                TokensPrompt(prompt_token_ids=request.prompt_tokens),
                params,
                request.request_id,
                lora_request=lora,
            )
            async for out in _schema_errors(outputs, constrained=bool(constraint)):
                completion = out.outputs[0]
                ids = list(completion.token_ids[seen:])
                seen = len(completion.token_ids)
                reason: FinishReason | None = None
                if completion.finish_reason is not None:
                    reason = "length" if completion.finish_reason == "length" else "stop"
                    finished = True
                yield TokenStep(ids, reason)
        finally:
            self._running -= 1
            if not finished:
                await self._engine.abort(request.request_id)

    async def add_adapter(self, name: str, path: Path) -> None:
        if not (path / "adapter_config.json").is_file():
            raise AdapterUnavailable(f"adapter {name!r}: no adapter_config.json in {path}")
        if name not in self._adapters:
            from vllm.lora.request import LoRARequest

            self._adapters[name] = (self._next_id, path)
            self._next_id += 1
            try:
                await self._engine.add_lora(LoRARequest(name, self._adapters[name][0], str(path)))
            except Exception as exc:
                del self._adapters[name]
                raise AdapterUnavailable(f"adapter {name!r} at {path}: {exc}") from exc

    async def remove_adapter(self, name: str) -> None:
        entry = self._adapters.pop(name, None)
        if entry is not None:
            await self._engine.remove_lora(entry[0])

    def loaded_adapters(self) -> set[str]:
        return set(self._adapters)

    async def score(self, requests: list[ForcedRequest]) -> list[ForcedScores]:
        """vLLM's prompt logprobs over prompt + target: each prompt position's entry holds the
        token's own logprob and rank (rank 1 is the argmax)."""
        import asyncio
        import uuid

        return list(await asyncio.gather(*(self._score_one(r, uuid.uuid4().hex) for r in requests)))

    async def _score_one(self, request: ForcedRequest, request_id: str) -> ForcedScores:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        lora = None
        if request.adapter is not None:
            if request.adapter not in self._adapters:
                raise AdapterUnavailable(f"adapter {request.adapter!r} is not loaded")
            lora_id, path = self._adapters[request.adapter]
            lora = LoRARequest(request.adapter, lora_id, str(path))
        tokens = request.prompt_tokens + request.target_tokens
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        final: Any = None
        async for out in self._engine.generate(
            TokensPrompt(prompt_token_ids=tokens), params, request_id, lora_request=lora
        ):
            final = out
        entries = (final.prompt_logprobs or []) if final is not None else []
        start = len(request.prompt_tokens)
        logprobs, hits = [], []
        for position in range(start, len(tokens)):
            entry = entries[position][tokens[position]]
            logprobs.append(float(entry.logprob))
            hits.append(int(entry.rank) == 1)
        return ForcedScores(logprobs, hits)

    def stats(self) -> EngineStats:
        return EngineStats(self._running, 0, int(self._args.get("max_num_seqs", 256)))

    async def shutdown(self) -> None:
        self._engine.shutdown()


async def _schema_errors(outputs: Any, *, constrained: bool) -> AsyncGenerator[Any, None]:
    """vLLM's outputs; a ValueError before the first one, for a constrained request, is vLLM
    refusing the schema (it validates structured output when the request is added)."""
    first = True
    try:
        async for out in outputs:
            first = False
            yield out
    except ValueError as exc:
        if constrained and first:
            raise InvalidRequest(f"response_format.json_schema: {exc}") from exc
        raise
