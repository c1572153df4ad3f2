"""The reference engine: Hugging Face `transformers` Mistral on CPU or GPU, with batching.

Continuous batching: a background loop keeps one batch of running sequences with a shared,
left-padded KV cache. Each iteration admits waiting sequences (each prefilled on its own and
merged into the batch cache), then decodes one token for every running sequence in a single
forward pass. LoRA adapters are peft adapters; one batch mixes sequences of different adapters
(peft's `adapter_names`). The model only runs in a worker thread, under `_model_lock`.

JSON-constrained sequences (`SamplingParams.json_schema`) carry an xgrammar matcher: in each
step their rows of the batch's logits are masked to the tokens their grammar allows before
sampling, the sampled token advances the matcher, and a completed document ends with "stop".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import threading
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tramontane_workers.engines.base import (
    Engine,
    EngineStats,
    FinishReason,
    ForcedRequest,
    ForcedScores,
    GenerationRequest,
    TokenStep,
)
from tramontane_workers.engines.grammar import JsonGrammars, mask_logits
from tramontane_workers.engines.sampling import choose_token
from tramontane_workers.errors import AdapterUnavailable, EngineUnavailable
from tramontane_workers.models.loading import detect_format, find_tokenizer

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    out: asyncio.Queue[TokenStep | BaseException]
    generator: torch.Generator
    matcher: Any = None  # xgrammar GrammarMatcher of a JSON-constrained sequence
    generated: int = 0
    last_token: int = 0
    position: int = 0  # position id of `last_token`
    done: bool = False
    cancelled: bool = False
    events: list[TokenStep] = field(default_factory=list)


def _resolve_dtype(dtype: str) -> torch.dtype:
    if dtype in ("auto", "float32"):
        return torch.float32
    if dtype in ("bfloat16", "float16"):
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    raise EngineUnavailable(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")


class TransformersEngine(Engine):
    """Reference engine over a Hugging Face Mistral checkpoint."""

    def __init__(
        self,
        model_dir: Path,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        if detect_format(model_dir) != "hf":
            raise EngineUnavailable(
                f"checkpoint {model_dir} is in Mistral format; the transformers engine needs a "
                "Hugging Face checkpoint (config.json) — serve it with engine: vllm"
            )
        from transformers import MistralForCausalLM

        self.model_dir = model_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model: Any = MistralForCausalLM.from_pretrained(model_dir, dtype=_resolve_dtype(dtype))
        self.model: Any = model.to(self.device)
        self.model.eval()
        # transformers 5 calls the KV cache `cache`; 4.x calls it `past_key_values`
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        limit = int(self.model.config.max_position_embeddings)
        self.max_model_len = min(max_model_len or limit, limit)
        self.max_batch_size = max_batch_size
        self._waiting: deque[_Sequence] = deque()
        self._batch: list[_Sequence] = []  # one per row of `_cache`, in row order
        self._cache: Any = None  # transformers Cache shared by `_batch`, left-padded
        self._mask: torch.Tensor | None = None  # (batch, cache length) attention mask
        self._adapters: set[str] = set()
        self._peft = False  # becomes a peft model on the first adapter, and stays one
        self._retired: set[str] = set()  # adapters to delete once no sequence uses them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._model_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._grammars: JsonGrammars | None = None  # built on the first constrained request
        self._grammars_lock = threading.Lock()

    def _bind_loop(self) -> None:
        """Bind the asyncio primitives to the running loop (a new loop gets fresh ones)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._wake, self._model_lock = loop, asyncio.Event(), asyncio.Lock()
            self._loop_task = None

    # ----------------------------------------------------------------------------- public API
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        # An adapter evicted a moment ago is still in memory (deletion waits for its last
        # sequence), so a request that resolved it just before the eviction still runs.
        if request.adapter is not None and request.adapter not in self._adapters:
            raise AdapterUnavailable(f"adapter {request.adapter!r} is not loaded")
        seed = request.sampling.seed
        generator = torch.Generator().manual_seed(
            seed if seed is not None else random.getrandbits(63)
        )
        self._bind_loop()
        schema = request.sampling.json_schema
        matcher = None if schema is None else await asyncio.to_thread(self._new_matcher, schema)
        seq = _Sequence(request, asyncio.Queue(), generator, matcher)
        self._ensure_loop()
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                item = await _drain(seq.out)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            seq.cancelled = True  # the loop drops it at its next iteration
            self._wake.set()

    async def add_adapter(self, name: str, path: Path) -> None:
        if not (path / "adapter_config.json").is_file():
            raise AdapterUnavailable(f"adapter {name!r}: no adapter_config.json in {path}")
        self._bind_loop()
        async with self._model_lock:
            self._retired.discard(name)
            if name in self._adapters:
                return
            try:
                await asyncio.to_thread(self._load_adapter, name, path)
            except Exception as exc:
                raise AdapterUnavailable(f"adapter {name!r} at {path}: {exc}") from exc
            self._adapters.add(name)

    async def remove_adapter(self, name: str) -> None:
        self._bind_loop()
        if name in self._adapters:
            self._retired.add(name)
            self._wake.set()
            if self._loop_task is None:
                async with self._model_lock:
                    self._delete_retired()

    def loaded_adapters(self) -> set[str]:
        return self._adapters - self._retired

    async def score(self, requests: list[ForcedRequest]) -> list[ForcedScores]:
        for request in requests:
            if request.adapter is not None and request.adapter not in self._adapters:
                raise AdapterUnavailable(f"adapter {request.adapter!r} is not loaded")
        self._bind_loop()
        async with self._model_lock:  # between decoding steps, never inside one
            return await asyncio.to_thread(self._score, requests)

    def stats(self) -> EngineStats:
        running = sum(1 for s in self._batch if not (s.done or s.cancelled))
        waiting = sum(1 for s in self._waiting if not s.cancelled)
        return EngineStats(running, waiting, self.max_batch_size)

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    def _new_matcher(self, schema: str) -> Any:
        """A grammar matcher for `schema` (raises InvalidRequest); runs in a worker thread."""
        with self._grammars_lock:
            if self._grammars is None:
                vocab = int(self.model.config.vocab_size)
                tokenizer = find_tokenizer(self.model_dir)
                self._grammars = JsonGrammars.from_file(tokenizer, vocab_size=vocab)
        return self._grammars.matcher(schema)

    # ---------------------------------------------------------------------------- the loop
    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            active = [s for s in self._batch if not (s.done or s.cancelled)]
            if not active and not any(not s.cancelled for s in self._waiting):
                self._waiting.clear()
                self._wake.clear()
                async with self._model_lock:
                    self._delete_retired()  # evicted adapters go now, not at the next request
                await self._wake.wait()
                continue
            room = self.max_batch_size - len(active)
            admitted: list[_Sequence] = []
            while self._waiting and len(admitted) < room:
                seq = self._waiting.popleft()
                if not seq.cancelled:
                    admitted.append(seq)
            async with self._model_lock:
                try:
                    await asyncio.to_thread(self._step, admitted)
                except Exception as exc:  # a bug or OOM: fail these requests, keep serving
                    for seq in [*self._batch, *admitted]:
                        seq.events.clear()
                        seq.out.put_nowait(exc)
                        seq.done = True
                    self._batch, self._cache, self._mask = [], None, None
                self._delete_retired()
            for seq in [*self._batch, *admitted]:
                for event in seq.events:
                    seq.out.put_nowait(event)
                seq.events.clear()

    # ------------------------------------------------------------ model work (worker thread)
    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        cache: Any,
        adapters: list[str],
    ) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {}
        if self._peft:
            kwargs["adapter_names"] = adapters
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            **{self._cache_arg: cache},
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out.logits[:, -1, :].float().cpu(), new_cache

    @torch.inference_mode()
    def _step(self, admitted: list[_Sequence]) -> None:
        self._compact()
        if self._batch and self._mask is not None:
            batch = self._batch
            ids = torch.tensor([[s.last_token] for s in batch])
            mask = torch.cat([self._mask, torch.ones(len(batch), 1, dtype=torch.long)], dim=1)
            pos = torch.tensor([[s.position] for s in batch])
            names = [s.request.adapter or BASE_ADAPTER for s in batch]
            logits, self._cache = self._forward(ids, mask, pos, self._cache, names)
            self._mask = mask
            mask_logits(logits, [s.matcher for s in batch])
            for row, seq in enumerate(batch):
                self._emit(seq, logits[row])
        for seq in admitted:
            self._prefill(seq)

    def _prefill(self, seq: _Sequence) -> None:
        prompt = seq.request.prompt_tokens
        ids = torch.tensor([prompt])
        mask = torch.ones(1, len(prompt), dtype=torch.long)
        pos = torch.arange(len(prompt)).unsqueeze(0)
        logits, cache = self._forward(ids, mask, pos, None, [seq.request.adapter or BASE_ADAPTER])
        seq.position = len(prompt) - 1
        mask_logits(logits, [seq.matcher])
        self._emit(seq, logits[0])
        if not seq.done:
            self._merge(cache, mask)
            self._batch.append(seq)

    def _emit(self, seq: _Sequence, logits: torch.Tensor) -> None:
        params = seq.request.sampling
        token = choose_token(
            logits, temperature=params.temperature, top_p=params.top_p, generator=seq.generator
        )
        seq.generated += 1
        seq.last_token = token
        seq.position += 1
        finish: FinishReason | None = None
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            raise RuntimeError(f"token {token} was sampled outside the JSON grammar's mask")
        json_done = seq.matcher is not None and seq.matcher.is_terminated()
        if token in params.stop_token_ids or json_done:
            finish = "stop"
        elif seq.generated >= params.max_tokens or seq.position >= self.max_model_len:
            finish = "length"
        seq.events.append(TokenStep([token], finish))
        seq.done = finish is not None

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Add a prefilled sequence (batch of one) to the batch cache, left-padding both."""
        if self._cache is None or self._mask is None or self._mask.shape[0] == 0:
            self._cache, self._mask = cache, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat(
                [_left_pad(mine.values, length), _left_pad(theirs.values, length)]
            )
        self._mask = torch.cat([_left_pad(self._mask, length), _left_pad(mask, length)])

    def _compact(self) -> None:
        """Drop finished or cancelled rows from the batch cache, then all-padding columns."""
        keep = [i for i, s in enumerate(self._batch) if not (s.done or s.cancelled)]
        if self._mask is None or self._cache is None:
            return
        if len(keep) != self._mask.shape[0]:
            index = torch.tensor(keep, dtype=torch.long)
            for layer in self._cache.layers:
                layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))
                layer.values = layer.values.index_select(0, index.to(layer.values.device))
            self._mask = self._mask.index_select(0, index)
            self._batch = [self._batch[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        used = (self._mask.sum(dim=0) > 0).nonzero()
        first = int(used[0].item()) if len(used) else 0
        if first > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
            self._mask = self._mask[:, first:]

    @torch.inference_mode()
    def _score(self, requests: list[ForcedRequest]) -> list[ForcedScores]:
        """One right-padded forward pass over prompt + target of every request (no cache)."""
        if not requests:
            return []
        rows = [r.prompt_tokens + r.target_tokens for r in requests]
        width = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        kwargs: dict[str, Any] = {}
        if self._peft:
            kwargs["adapter_names"] = [r.adapter or BASE_ADAPTER for r in requests]
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
        ).logits
        scores = []
        for i, request in enumerate(requests):
            start, count = len(request.prompt_tokens), len(request.target_tokens)
            # logits at position p predict token p + 1
            rows_logits = logits[i, start - 1 : start - 1 + count].float()
            logprobs = torch.log_softmax(rows_logits, dim=-1)
            target = torch.tensor(request.target_tokens, device=logprobs.device)
            picked = logprobs.gather(1, target.unsqueeze(1)).squeeze(1)
            hits = rows_logits.argmax(dim=-1) == target
            scores.append(ForcedScores(picked.cpu().tolist(), hits.cpu().tolist()))
        return scores

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self._peft = True
        self.model.eval()

    def _delete_retired(self) -> None:
        live = [s for s in [*self._batch, *self._waiting] if not (s.done or s.cancelled)]
        busy = {s.request.adapter for s in live}
        for name in sorted(self._retired - busy):
            self.model.delete_adapter(name)
            self._adapters.discard(name)
            self._retired.discard(name)


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad dim 2 (cache: batch, heads, seq, dim) or dim 1 (mask: batch, seq) with zeros."""
    dim = 2 if tensor.dim() == 4 else 1
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


async def _drain(queue: asyncio.Queue[TokenStep | BaseException]) -> TokenStep | BaseException:
    """Wait for the next step, then merge every step already queued behind it.

    A consumer slower than the engine (a stream through a proxy) gets the tokens produced
    meanwhile in one step instead of falling behind one message per token.
    """
    item = await queue.get()
    tokens: list[int] = []
    while isinstance(item, TokenStep):
        tokens += item.token_ids
        if item.finish_reason is not None or queue.empty():
            return TokenStep(tokens, item.finish_reason)
        item = queue.get_nowait()
    return item  # an error: raised as it is
