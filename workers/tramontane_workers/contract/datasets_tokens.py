"""Parse a conversation with mistral-common's models and tokenize it with the real v3 tokenizer.

`encode_record` is the one place a conversation becomes tokens: validation counts them, the
trainer learns from them. It parses the line into mistral-common's `ChatCompletionRequest` of
fine-tuning messages, runs `MistralRequestValidatorV3` in fine-tuning mode, normalizes it the
way mistral-common does, and encodes message by message so that each token knows whether it
is a trainable assistant token (assistant message with weight != 0, its end-of-sequence token
included). The concatenation equals mistral-common's own `encode_instruct` output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mistral_common.exceptions import MistralCommonException
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    FinetuningAssistantMessage,
    FinetuningMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.normalize import InstructRequestNormalizer
from mistral_common.protocol.instruct.request import ChatCompletionRequest, InstructRequest
from mistral_common.protocol.instruct.tool_calls import Tool
from mistral_common.protocol.instruct.validator import MistralRequestValidatorV3, ValidationMode
from mistral_common.tokens.tokenizers.instruct import InstructTokenizerBase
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from pydantic import ValidationError

from tramontane_workers.contract.datasets_rules import Violation

# Pydantic's union/discriminator tags that appear in error locations but are not field names.
_ROLE_TAGS = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids of one conversation and, per token, 1 where the loss applies."""

    tokens: list[int]
    mask: list[int]

    @property
    def trainable(self) -> int:
        return sum(self.mask)


@lru_cache(maxsize=1)
def tokenizer() -> MistralTokenizer[Any, Any, Any, Any, Any]:
    """mistral-common's v3 (sentencepiece, 32,768 ids) tokenizer, loaded once per process."""
    return MistralTokenizer.v3()


@lru_cache(maxsize=1)
def _validator() -> MistralRequestValidatorV3:
    return MistralRequestValidatorV3(ValidationMode.finetuning)


@lru_cache(maxsize=1)
def _normalizer() -> InstructRequestNormalizer[Any, Any, Any, Any, Any]:
    """mistral-common's v3 normalizer, keeping assistant weights (its default drops them)."""
    return InstructRequestNormalizer(
        UserMessage,
        FinetuningAssistantMessage,
        ToolMessage,
        SystemMessage,
        InstructRequest[Any, Tool],
        None,
    )


@lru_cache(maxsize=1)
def _instruct_tokenizer() -> InstructTokenizerBase[Any, Any, Any]:
    encoder = tokenizer().instruct_tokenizer
    if not isinstance(encoder, InstructTokenizerBase):  # pragma: no cover - mistral-common API
        raise TypeError(f"unexpected instruct tokenizer {type(encoder).__name__}")
    return encoder


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 2, 'assistant', 'tool_calls', 0, 'id') -> 'messages[2].tool_calls[0].id'."""
    path = ""
    after_message_index = False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            after_message_index = path.startswith("messages") and path.count("[") == 1
            continue
        if (after_message_index and part in _ROLE_TAGS) or "[" in part or part in ("str", "dict"):
            after_message_index = False
            continue
        after_message_index = False
        path += f".{part}" if path else part
    return path


def parse_record(record: dict[str, Any]) -> ChatCompletionRequest[Any] | Violation:
    """mistral-common's request model plus its v3 fine-tuning validator, or the first complaint."""
    try:
        request = ChatCompletionRequest[FinetuningMessage].model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        return Violation(_loc_to_path(tuple(first["loc"])), first["msg"])
    try:
        _validator().validate_messages(request.messages)
    except (MistralCommonException, ValueError) as exc:
        return Violation("messages", f"mistral-common: {exc}")
    if request.tools:
        complaint = _check_tools_cached(json.dumps(record["tools"], sort_keys=True))
        if complaint is not None:
            return Violation("tools", f"mistral-common: {complaint}")
    return request


@lru_cache(maxsize=256)
def _check_tools_cached(tools_json: str) -> str | None:
    """mistral-common's tool checks (JSON-schema draft 7, names); datasets repeat their tools."""
    request = ChatCompletionRequest[FinetuningMessage].model_validate(
        {"messages": [{"role": "user", "content": "."}], "tools": json.loads(tools_json)}
    )
    try:  # test mode: a lone user message is a valid carrier for the tools
        MistralRequestValidatorV3(ValidationMode.test).validate_request(request)
    except (MistralCommonException, ValueError) as exc:
        return str(exc)
    return None


def encode_request(request: ChatCompletionRequest[Any]) -> Encoded:
    """Tokens and loss mask of a validated request (BOS, then each message in turn)."""
    instruct: InstructRequest[Any, Any] = _normalizer().from_chat_completion_request(request)
    encoder = _instruct_tokenizer()
    tokens: list[int] = list(encoder.start())
    mask: list[int] = [0] * len(tokens)
    first_user, last_user = encoder.find_first_last_user(instruct)
    for idx, msg in enumerate(instruct.messages):
        trainable = 0
        if isinstance(msg, UserMessage):
            new, _, _ = encoder.encode_user_message(
                msg,
                instruct.available_tools,
                idx == last_user,
                idx == first_user,
                system_prompt=instruct.system_prompt,
                force_img_first=True,
                settings=instruct.settings,
            )
        elif isinstance(msg, ToolMessage):
            new, _, _ = encoder.encode_tool_message(msg, idx < last_user)
        elif isinstance(msg, AssistantMessage):
            new = encoder.encode_assistant_message(msg, idx < last_user)
            trainable = 0 if getattr(msg, "weight", None) == 0 else 1
        elif isinstance(msg, SystemMessage):  # v3 folds system prompts into a user message
            new, _ = encoder.encode_system_message(msg)
        else:  # pragma: no cover - the normalizer only yields the four roles
            raise TypeError(f"unknown message type {type(msg).__name__}")
        tokens.extend(new)
        mask.extend([trainable] * len(new))
    return Encoded(tokens=tokens, mask=mask)


def encode_record(record: dict[str, Any]) -> Encoded | Violation:
    """Parse, validate and tokenize one decoded line (already checked by `check_record`)."""
    parsed = parse_record(record)
    if isinstance(parsed, Violation):
        return parsed
    try:
        return encode_request(parsed)
    except (MistralCommonException, ValueError) as exc:
        return Violation("messages", f"cannot tokenize: {exc}")
