"""What a request may cost in tokens, before it runs: its prompt counted with the real
tokenizer, plus the most it may generate.

The prompt is counted with mistral-common's v3 tokenizer (the SentencePiece model the tiny and
the v3 Mistral models use): the text of every message, tool call, tool definition and
response schema, plus the control tokens the instruct template adds around each message
([INST] ... [/INST], </s>, [AVAILABLE_TOOLS], [TOOL_CALLS], [TOOL_RESULTS]), plus one token per
piece for boundary effects. The worker reports the exact count when the request ends and the
reservation is settled to it, so a model whose tokenizer differs from v3 only shifts the
reservation for the time the request runs.

The most a request may generate is its `max_tokens`; without it, what the model's context
leaves after the prompt (`spec.runtime.maxModelLen`, else the context the workers report in
`ListModels`): the real worst case, not a constant. Only before the router has heard either
does it assume `DEFAULT_CONTEXT` (32,768, the context of Mistral's v3 models).

Tokenizing costs about 1.5 us per character: prompts over `INLINE_CHARS` are counted in a
thread so the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from typing import Any

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract.prompts import SAFE_PROMPT

DEFAULT_CONTEXT = 32_768
INLINE_CHARS = 2_000
_PER_MESSAGE = 3  # control tokens around one message, plus a boundary token
_PER_BLOCK = 3  # [AVAILABLE_TOOLS] / [TOOL_CALLS] / [TOOL_RESULTS] and their closers


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v3().instruct_tokenizer.tokenizer


def warm_up() -> None:
    """Load the tokenizer now (about 2 s) rather than on the first limited request."""
    _tokenizer()


def _pieces(request: pb.ChatRequest) -> tuple[list[str], int]:
    """The texts the prompt is made of, and the control tokens around them."""
    texts: list[str] = [SAFE_PROMPT] if request.safe_prompt else []
    control = 1 + _PER_MESSAGE * (len(request.messages) + (1 if request.safe_prompt else 0))
    for message in request.messages:
        texts.append(message.content)
        if message.tool_calls:
            control += _PER_BLOCK
            texts.append(
                json.dumps(
                    [{"name": c.function.name, "arguments": c.function.arguments,
                      "id": c.id} for c in message.tool_calls]
                )
            )  # fmt: skip
        if message.role == "tool":
            control += _PER_BLOCK
            texts.append(message.tool_call_id + message.name)
    if request.tools:
        control += _PER_BLOCK
        texts.append(
            json.dumps(
                [{"name": t.function.name, "description": t.function.description,
                  "parameters": t.function.parameters} for t in request.tools]
            )
        )  # fmt: skip
    if request.response_format.type == "json_schema":
        texts.append(request.response_format.json_schema.schema)
    return [t for t in texts if t], control


def count_prompt_tokens(request: pb.ChatRequest) -> int:
    texts, control = _pieces(request)
    raw = _tokenizer()
    return control + len(texts) + sum(len(raw.encode(t, bos=False, eos=False)) for t in texts)


async def prompt_tokens(request: pb.ChatRequest) -> int:
    """`count_prompt_tokens`, in a thread when the prompt is long."""
    size = sum(len(m.content) for m in request.messages)
    if size <= INLINE_CHARS:
        return count_prompt_tokens(request)
    return await asyncio.to_thread(count_prompt_tokens, request)


def worst_case(prompt: int, request: pb.ChatRequest, context: int | None) -> int:
    """Prompt plus the most the request may generate."""
    if request.HasField("max_tokens"):
        return prompt + request.max_tokens
    return max(prompt, context or DEFAULT_CONTEXT)
