"""The vLLM engine (GPU): vLLM's async engine behind the token-level `Engine` interface.

vLLM is imported lazily. Without vLLM or without a GPU, construction raises `EngineUnavailable`
with the reason; nothing falls back to another engine. Mistral-format checkpoints are loaded
with `tokenizer_mode`, `config_format` and `load_format` = "mistral". LoRA is enabled with
`max_loras` from the spec. Prompts arrive as token ids from the shared chat layer, which also
parses Mistral tool calls (`[TOOL_CALLS]`), so both engines answer the same way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Literal

from tramontane_workers.engines.base import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationRequest,
    TokenStep,
)
from tramontane_workers.errors import AdapterUnavailable, EngineUnavailable


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


class VLLMEngine(Engine):
    """vLLM's AsyncLLMEngine; continuous batching and LoRA slots are vLLM's own."""

    def __init__(self, **kwargs: Any) -> None:
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(reason)
        from vllm import AsyncEngineArgs, AsyncLLMEngine

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
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            stop_token_ids=sorted(s.stop_token_ids),
            detokenize=False,  # the chat layer detokenises, for both engines alike
        )
        seen, finished = 0, False
        self._running += 1
        try:
            async for out in self._engine.generate(
                TokensPrompt(prompt_token_ids=request.prompt_tokens),
                params,
                request.request_id,
                lora_request=lora,
            ):
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

    def stats(self) -> EngineStats:
        return EngineStats(self._running, 0, int(self._args.get("max_num_seqs", 256)))

    async def shutdown(self) -> None:
        self._engine.shutdown()
