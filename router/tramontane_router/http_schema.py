"""The Mistral chat-completion API's JSON, as pydantic models, and its mapping to and from the
`tramontane.v1` messages the data plane speaks.

Accepted: every field of Mistral's `POST /v1/chat/completions` that the runtime implements,
plus the OpenAI spellings the `openai` SDK sends (`seed`, `max_completion_tokens`,
`stream_options`). Fields the runtime cannot honour are accepted only at their neutral value
(`n: 1`, penalties 0, `parallel_tool_calls: true`) and refused otherwise with a message naming
the field; unknown fields are refused. Nothing is silently ignored.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from tramontane_workers.contract import inference_pb2 as pb

from .errors import InvalidRequest

# The proto's integer widths: a larger number is refused here, naming the field, rather than
# failing when the request is built.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextChunk(_Body):
    type: Literal["text"]
    text: StrictStr


class FunctionCallBody(_Body):
    name: StrictStr
    arguments: StrictStr | dict[str, Any]


class ToolCallBody(_Body):
    id: StrictStr | None = None
    type: Literal["function"] | None = "function"
    function: FunctionCallBody
    index: Annotated[StrictInt, Field(ge=0, le=INT32_MAX)] | None = None


class MessageBody(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr | list[TextChunk] | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: StrictStr | None = None
    name: StrictStr | None = None
    prefix: StrictBool = False


class FunctionBody(_Body):
    name: StrictStr
    description: StrictStr = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    strict: StrictBool | None = None


class ToolBody(_Body):
    type: Literal["function"] = "function"
    function: FunctionBody


class JsonSchemaBody(_Body):
    name: StrictStr
    description: StrictStr | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool = False


class ResponseFormatBody(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaBody | None = None


class StreamOptions(_Body):
    include_usage: StrictBool | None = None


# A JSON number: an integer is accepted, a string or a boolean is not.
Number = StrictFloat
Tokens = Annotated[StrictInt, Field(ge=1, le=INT32_MAX)]
Seed = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]


class ChatCompletionBody(_Body):
    model: StrictStr
    messages: list[MessageBody]
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    random_seed: Seed | None = None
    seed: Seed | None = None
    response_format: ResponseFormatBody | None = None
    tools: list[ToolBody] | None = None
    tool_choice: Literal["auto", "none", "any", "required"] | None = None
    safe_prompt: StrictBool = False
    # Accepted only at the value that means "not used".
    n: Literal[1] | None = None
    presence_penalty: Literal[0] | None = None
    frequency_penalty: Literal[0] | None = None
    parallel_tool_calls: Literal[True] | None = None


def _content(message: MessageBody) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(chunk.text for chunk in message.content)


def to_request(body: ChatCompletionBody) -> pb.ChatRequest:
    """The proto request for a validated body."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidRequest(
            "max_completion_tokens: give max_tokens or max_completion_tokens, not both",
            param="max_completion_tokens",
        )
    if body.random_seed is not None and body.seed is not None:
        raise InvalidRequest("seed: give random_seed or seed, not both", param="seed")
    request = pb.ChatRequest(model=body.model, safe_prompt=body.safe_prompt)
    for i, m in enumerate(body.messages):
        message = pb.Message(role=m.role, content=_content(m), prefix=m.prefix)
        for j, call in enumerate(m.tool_calls or []):
            arguments = call.function.arguments
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            message.tool_calls.append(
                pb.ToolCall(
                    id=call.id or "",
                    type="function",
                    index=call.index if call.index is not None else j,
                    function=pb.FunctionCall(
                        name=call.function.name,
                        arguments=arguments,
                    ),
                )
            )
        if m.tool_call_id is not None:
            message.tool_call_id = m.tool_call_id
        if m.name is not None:
            message.name = m.name
        if m.tool_calls and m.role != "assistant":
            raise InvalidRequest(
                f"messages.{i}.tool_calls: only assistant messages carry tool calls",
                param=f"messages.{i}.tool_calls",
            )
        request.messages.append(message)
    if body.temperature is not None:
        request.temperature = body.temperature
    if body.top_p is not None:
        request.top_p = body.top_p
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if body.stop is not None:
        request.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    seed = body.random_seed if body.random_seed is not None else body.seed
    if seed is not None:
        request.random_seed = seed
    for tool in body.tools or []:
        request.tools.append(
            pb.Tool(
                type="function",
                function=pb.Function(
                    name=tool.function.name,
                    description=tool.function.description,
                    parameters=json.dumps(tool.function.parameters),
                ),
            )
        )
    if body.tool_choice is not None:
        request.tool_choice = body.tool_choice
    if body.response_format is not None:
        fmt = body.response_format
        request.response_format.type = fmt.type
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise InvalidRequest(
                    "response_format.json_schema: required when type is json_schema",
                    param="response_format.json_schema",
                )
            request.response_format.json_schema.CopyFrom(
                pb.JsonSchema(
                    name=fmt.json_schema.name,
                    description=fmt.json_schema.description or "",
                    schema=json.dumps(fmt.json_schema.schema_),
                    strict=fmt.json_schema.strict,
                )
            )
    return request


def _tool_calls(calls: Any) -> list[dict[str, Any]] | None:
    out = [
        {
            "id": c.id,
            "type": c.type or "function",
            "function": {"name": c.function.name, "arguments": c.function.arguments},
            "index": c.index,
        }
        for c in calls
    ]
    return out or None


def _usage(usage: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def response_json(response: pb.ChatResponse) -> dict[str, Any]:
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created or int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": c.index,
                "message": {
                    "role": c.message.role or "assistant",
                    "content": c.message.content,
                    "tool_calls": _tool_calls(c.message.tool_calls),
                    "prefix": False,
                },
                "finish_reason": c.finish_reason or "stop",
            }
            for c in response.choices
        ],
        "usage": _usage(response.usage),
    }


def chunk_json(chunk: pb.ChatChunk) -> dict[str, Any]:
    """One SSE event; usage only on the last chunk (the one with a finish_reason), as
    Mistral's API sends it."""
    last = any(c.finish_reason for c in chunk.choices)
    out: dict[str, Any] = {
        "id": chunk.id,
        "object": "chat.completion.chunk",
        "created": chunk.created or int(time.time()),
        "model": chunk.model,
        "choices": [
            {
                "index": c.index,
                "delta": {
                    **({"role": c.delta.role} if c.delta.role else {}),
                    "content": c.delta.content,
                    **(
                        {"tool_calls": _tool_calls(c.delta.tool_calls)}
                        if c.delta.tool_calls
                        else {}
                    ),
                },
                "finish_reason": c.finish_reason or None,
            }
            for c in chunk.choices
        ],
    }
    if last and chunk.HasField("usage"):
        out["usage"] = _usage(chunk.usage)
    return out


def model_json(card: pb.ModelCard) -> dict[str, Any]:
    """A card as Mistral's `/v1/models` lists it (adapters as fine-tuned models)."""
    out: dict[str, Any] = {
        "id": card.id,
        "object": "model",
        "created": 0,
        "owned_by": card.owned_by,
        "root": card.root,
        "max_context_length": card.max_context_length or None,
        "type": "base" if card.kind == "base" else "fine-tuned",
        "capabilities": {"completion_chat": True, "function_calling": True},
        "ready": card.loaded,
    }
    if card.kind != "base":
        out["job"] = card.id
        out["archived"] = False
    return out
