"""Chat requests -> prompt tokens and sampling parameters, validated as Mistral's API does.

The proto request becomes a `mistral-common` `ChatCompletionRequest`, validated in serving mode
and encoded by the model's own tokenizer (the same normalisation Mistral's API applies). Every
rejection is an `InvalidRequest` whose message starts with the field at fault.

`response_format` becomes mistral-common's `ResponseFormat` (draft-7 schema check included) and
its grammar schema (`get_schema(SchemaRenderingMode.grammar)`: json_object and non-strict
json_schema are "any JSON object or array", strict json_schema is the schema itself), which the
engines enforce by constrained decoding (`SamplingParams.json_schema`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistral_common.exceptions import (
    InvalidToolException,
    InvalidToolSchemaException,
    MistralCommonException,
)
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import (
    ChatCompletionRequest,
    JsonSchema,
    ResponseFormat,
    SchemaRenderingMode,
)
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from pydantic import ValidationError

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract.prompts import SAFE_PROMPT
from tramontane_workers.engines.base import SamplingParams
from tramontane_workers.errors import InvalidRequest

DEFAULT_TEMPERATURE = 0.7
TOOL_CHOICES = ("auto", "none", "any", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class EncodedChat:
    """A validated request, ready for an engine and for `CompletionAssembler`."""

    prompt_tokens: list[int]
    sampling: SamplingParams
    stop: tuple[str, ...]
    parse_tool_calls: bool  # tool calls allowed: parse a leading [TOOL_CALLS]
    forced_tool_call: bool  # tool_choice any/required: [TOOL_CALLS] ends the prompt


def _message(index: int, msg: pb.Message) -> Any:
    where = f"messages[{index}]"
    role = msg.role
    if role == "system":
        return SystemMessage(content=msg.content)
    if role == "user":
        return UserMessage(content=msg.content)
    if role == "tool":
        if not msg.tool_call_id:
            raise InvalidRequest(f"{where}.tool_call_id: required on a tool message")
        return ToolMessage(
            content=msg.content, tool_call_id=msg.tool_call_id, name=msg.name or None
        )
    if role == "assistant":
        calls = []
        for j, call in enumerate(msg.tool_calls):
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"{where}.tool_calls[{j}].function.arguments: not valid JSON ({exc.msg})"
                ) from exc
            calls.append(
                ToolCall(
                    id=call.id or "null",
                    function=FunctionCall(name=call.function.name, arguments=arguments),
                )
            )
        return AssistantMessage(
            content=msg.content or None, tool_calls=calls or None, prefix=msg.prefix
        )
    allowed = ", ".join(("system", "user", "assistant", "tool"))
    raise InvalidRequest(f"{where}.role: {role!r} is not one of {allowed}")


def _tool(index: int, tool: pb.Tool) -> Tool:
    where = f"tools[{index}]"
    if tool.type not in ("", "function"):
        raise InvalidRequest(f"{where}.type: {tool.type!r} is not 'function'")
    if not tool.function.name:
        raise InvalidRequest(f"{where}.function.name: required")
    try:
        parameters = json.loads(tool.function.parameters or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}.function.parameters: not valid JSON ({exc.msg})") from exc
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"{where}.function.parameters: must be a JSON object")
    return Tool(
        function=Function(
            name=tool.function.name, description=tool.function.description, parameters=parameters
        )
    )


def _response_format(request: pb.ChatRequest) -> ResponseFormat:
    """The request's response format as mistral-common's, validated (field named on errors)."""
    fmt = request.response_format
    kind = fmt.type or "text"
    if kind not in RESPONSE_FORMATS:
        raise InvalidRequest(f"response_format.type: {kind!r} is not one of {RESPONSE_FORMATS}")
    where = "response_format.json_schema"
    if kind != "json_schema":
        if fmt.HasField("json_schema"):  # a schema that would be ignored: say so
            raise InvalidRequest(f"{where}: set, but response_format.type is {kind!r}")
        return ResponseFormat(type=kind)
    if not fmt.HasField("json_schema"):
        raise InvalidRequest(f"{where}: required when response_format.type is json_schema")
    spec = fmt.json_schema
    if not spec.name:
        raise InvalidRequest(f"{where}.name: required")
    try:
        schema = json.loads(spec.schema)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}.schema: not valid JSON ({exc.msg})") from exc
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where}.schema: must be a JSON object (a JSON Schema)")
    try:
        json_schema = JsonSchema.model_validate(
            {
                "name": spec.name,
                "description": spec.description or None,
                "schema": schema,
                "strict": spec.strict,
            }
        )
    except ValidationError as exc:
        raise InvalidRequest(
            f"{where}.schema: not a valid JSON Schema ({exc.errors()[0]['msg']})"
        ) from exc
    return ResponseFormat(type=kind, json_schema=json_schema)


def _grammar_schema(fmt: ResponseFormat, request: pb.ChatRequest, tool_choice: str) -> str | None:
    """JSON Schema text the output must match (None: free text), as mistral-common renders it."""
    schema = fmt.get_schema(SchemaRenderingMode.grammar)
    if schema is None:
        return None
    if request.tools and tool_choice != "none":
        # Mistral's API lets the model choose between a tool call and JSON (tool_choice auto);
        # the engines' grammars cannot express that choice yet, so say so instead of ignoring
        # either the tools or the format.
        raise InvalidRequest(
            f"response_format.type: {fmt.type} with tools needs tool_choice 'none' (a "
            "choice between a tool call and a JSON answer cannot be constrained yet)"
        )
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def _sampling_checks(request: pb.ChatRequest) -> None:
    if request.HasField("temperature") and not 0.0 <= request.temperature <= 2.0:
        raise InvalidRequest(f"temperature: {request.temperature} is outside [0, 2]")
    if request.HasField("top_p") and not 0.0 < request.top_p <= 1.0:
        raise InvalidRequest(f"top_p: {request.top_p} is outside (0, 1]")
    if request.HasField("max_tokens") and request.max_tokens < 1:
        raise InvalidRequest(f"max_tokens: {request.max_tokens} must be at least 1")
    if request.HasField("random_seed") and request.random_seed < 0:
        raise InvalidRequest(f"random_seed: {request.random_seed} must not be negative")
    for i, stop in enumerate(request.stop):
        if not stop:
            raise InvalidRequest(f"stop[{i}]: must not be empty")


class ChatCodec:
    """Validates and encodes chat requests with one model's mistral-common tokenizer."""

    def __init__(self, tokenizer_file: Path, *, max_model_len: int):
        self.tokenizer = MistralTokenizer.from_file(
            str(tokenizer_file), mode=ValidationMode.serving
        )
        self.raw = self.tokenizer.instruct_tokenizer.tokenizer
        self.max_model_len = max_model_len
        self.tool_calls_id: int = self.raw.get_special_token("[TOOL_CALLS]")

    def assistant_tokens(self, message: pb.Message) -> list[int]:
        """Tokens of an assistant answer as the model is taught to produce it (its end of
        sequence included): what teacher forcing scores (raises InvalidRequest)."""
        try:
            encoded = self.tokenizer.instruct_tokenizer.encode_assistant_message(  # type: ignore[attr-defined]
                _message(0, message), False
            )
        except (MistralCommonException, ValidationError, ValueError) as exc:
            raise InvalidRequest(f"expected answer: {exc}") from exc
        return list(encoded)

    def decode(self, tokens: list[int]) -> str:
        """Text of `tokens`, special tokens dropped."""
        return str(self.raw.decode(tokens, special_token_policy=SpecialTokenPolicy.IGNORE))

    def encode(self, request: pb.ChatRequest) -> EncodedChat:
        """Validate `request` and encode its prompt (raises InvalidRequest naming the field)."""
        if not request.messages:
            raise InvalidRequest("messages: must not be empty")
        _sampling_checks(request)
        tool_choice = request.tool_choice or "auto"
        if tool_choice not in TOOL_CHOICES:
            raise InvalidRequest(f"tool_choice: {tool_choice!r} is not one of {TOOL_CHOICES}")
        if tool_choice in ("any", "required") and not request.tools:
            raise InvalidRequest(f"tool_choice: {tool_choice!r} needs at least one tool")
        response_format = _response_format(request)
        json_schema = _grammar_schema(response_format, request, tool_choice)
        try:
            messages = [_message(i, m) for i, m in enumerate(request.messages)]
            if request.safe_prompt:
                messages.insert(0, SystemMessage(content=SAFE_PROMPT))
            tools = [_tool(i, t) for i, t in enumerate(request.tools)]
            chat: ChatCompletionRequest[Any] = ChatCompletionRequest(
                model=request.model or "model",
                messages=messages,
                tools=tools or None,
                response_format=response_format,
            )
            tokens = list(self.tokenizer.encode_chat_completion(chat).tokens)
        except (InvalidToolSchemaException, InvalidToolException) as exc:
            raise InvalidRequest(f"tools: {exc}") from exc
        except MistralCommonException as exc:
            raise InvalidRequest(f"messages: {exc}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequest(f"messages: {where}: {first['msg']}") from exc
        forced = tool_choice in ("any", "required")
        if forced:
            tokens.append(self.tool_calls_id)
        room = self.max_model_len - len(tokens)
        if room < 1:
            raise InvalidRequest(
                f"messages: the prompt is {len(tokens)} tokens, longer than the model's context "
                f"of {self.max_model_len} tokens"
            )
        if request.HasField("max_tokens") and request.max_tokens > room:
            raise InvalidRequest(
                f"max_tokens: {request.max_tokens} plus the {len(tokens)}-token prompt exceeds "
                f"the context of {self.max_model_len} tokens"
            )
        sampling = SamplingParams(
            max_tokens=request.max_tokens if request.HasField("max_tokens") else room,
            temperature=(
                request.temperature if request.HasField("temperature") else DEFAULT_TEMPERATURE
            ),
            top_p=request.top_p if request.HasField("top_p") else 1.0,
            seed=request.random_seed if request.HasField("random_seed") else None,
            stop_token_ids=frozenset({self.raw.eos_id}),
            json_schema=json_schema,
        )
        return EncodedChat(
            prompt_tokens=tokens,
            sampling=sampling,
            stop=tuple(request.stop),
            parse_tool_calls=bool(request.tools) and tool_choice != "none",
            forced_tool_call=forced,
        )
