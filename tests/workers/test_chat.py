"""The chat layer with the real v3 tokenizer: validation, detokenisation, stops, tool calls."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tramontane_workers.chat.assemble import CompletionAssembler, Delta, parse_tool_calls
from tramontane_workers.chat.encode import ChatCodec
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract.prompts import SAFE_PROMPT
from tramontane_workers.engines.base import TokenStep
from tramontane_workers.errors import InvalidRequest
from tramontane_workers.models.tiny import bundled_v3_tokenizer

WEATHER = pb.Tool(
    type="function",
    function=pb.Function(
        name="get_weather",
        description="Weather in a city",
        parameters='{"type": "object", "properties": {"city": {"type": "string"}}}',
    ),
)


@pytest.fixture(scope="module")
def codec() -> ChatCodec:
    return ChatCodec(bundled_v3_tokenizer(), max_model_len=256)


def _user(text: str = "Hi") -> pb.Message:
    return pb.Message(role="user", content=text)


def _json_schema(schema: str, *, name: str = "answer", strict: bool = True) -> pb.ResponseFormat:
    return pb.ResponseFormat(
        type="json_schema", json_schema=pb.JsonSchema(name=name, schema=schema, strict=strict)
    )


def _tokens(codec: ChatCodec, text: str) -> list[int]:
    return list(codec.raw.encode(text, bos=False, eos=False))


def _run(assembler: CompletionAssembler, tokens: list[int], finish: str = "length") -> list[Delta]:
    deltas = []
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        deltas.append(assembler.feed(TokenStep([token], finish if last else None)))  # type: ignore[arg-type]
        if assembler.done:
            break
    return deltas


def test_encode_matches_mistral_common_and_defaults(codec: ChatCodec) -> None:
    encoded = codec.encode(pb.ChatRequest(model="m", messages=[_user("Hello")]))
    assert encoded.prompt_tokens[0] == codec.raw.bos_id
    assert codec.decode(encoded.prompt_tokens).strip() == "Hello"
    assert encoded.sampling.max_tokens == 256 - len(encoded.prompt_tokens)
    assert encoded.sampling.temperature == 0.7
    assert codec.raw.eos_id in encoded.sampling.stop_token_ids
    assert not encoded.parse_tool_calls


def test_response_format_becomes_mistral_commons_grammar_schema(codec: ChatCodec) -> None:
    def schema_of(fmt: pb.ResponseFormat, **kw: object) -> object:
        encoded = codec.encode(pb.ChatRequest(messages=[_user()], response_format=fmt, **kw))
        text = encoded.sampling.json_schema
        return None if text is None else json.loads(text)

    any_json = {"anyOf": [{"type": "object"}, {"type": "array"}]}
    person = '{"type": "object", "properties": {"b": {"type": "integer"}, "a": {}}}'
    assert schema_of(pb.ResponseFormat()) is None
    assert schema_of(pb.ResponseFormat(type="text")) is None
    assert schema_of(pb.ResponseFormat(type="json_object")) == any_json
    assert schema_of(_json_schema(person, strict=False)) == any_json  # as Mistral's API
    strict = schema_of(_json_schema(person))
    assert strict == json.loads(person)
    assert isinstance(strict, dict) and list(strict["properties"]) == ["b", "a"]  # order kept
    with_tools = schema_of(
        pb.ResponseFormat(type="json_object"), tools=[WEATHER], tool_choice="none"
    )
    assert with_tools == any_json


def test_safe_prompt_and_tools_reach_the_prompt(codec: ChatCodec) -> None:
    safe = codec.encode(pb.ChatRequest(messages=[_user()], safe_prompt=True))
    assert SAFE_PROMPT in codec.decode(safe.prompt_tokens)
    tools = codec.encode(pb.ChatRequest(messages=[_user()], tools=[WEATHER]))
    assert "get_weather" in codec.decode(tools.prompt_tokens)
    assert tools.parse_tool_calls and not tools.forced_tool_call
    forced = codec.encode(pb.ChatRequest(messages=[_user()], tools=[WEATHER], tool_choice="any"))
    assert forced.forced_tool_call and forced.prompt_tokens[-1] == codec.tool_calls_id
    none = codec.encode(pb.ChatRequest(messages=[_user()], tools=[WEATHER], tool_choice="none"))
    assert not none.parse_tool_calls


def test_tool_round_trip_messages_are_accepted(codec: ChatCodec) -> None:
    call = pb.ToolCall(
        id="abcDEF123",
        type="function",
        function=pb.FunctionCall(name="get_weather", arguments='{"city": "Nice"}'),
    )
    messages = [
        _user("Weather in Nice?"),
        pb.Message(role="assistant", tool_calls=[call]),
        pb.Message(role="tool", tool_call_id="abcDEF123", name="get_weather", content="sunny"),
    ]
    encoded = codec.encode(pb.ChatRequest(messages=messages, tools=[WEATHER]))
    assert "sunny" in codec.decode(encoded.prompt_tokens)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.ChatRequest(), "messages: must not be empty"),
        (pb.ChatRequest(messages=[pb.Message(role="robot", content="x")]), "messages[0].role"),
        (pb.ChatRequest(messages=[pb.Message(role="assistant", content="x")]), "messages: "),
        (
            pb.ChatRequest(messages=[_user(), pb.Message(role="tool", content="x")]),
            "messages[1].tool_call_id",
        ),
        (
            pb.ChatRequest(
                messages=[
                    _user(),
                    pb.Message(
                        role="assistant",
                        tool_calls=[
                            pb.ToolCall(
                                id="abcDEF123",
                                function=pb.FunctionCall(name="f", arguments="{oops"),
                            )
                        ],
                    ),
                ]
            ),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            pb.ChatRequest(messages=[_user("word " * 400)]),
            "messages: the prompt is 404 tokens, longer",
        ),
        (pb.ChatRequest(messages=[_user()], max_tokens=255), "max_tokens: 255"),
        (pb.ChatRequest(messages=[_user()], max_tokens=0), "max_tokens"),
        (pb.ChatRequest(messages=[_user()], top_p=0.0), "top_p"),
        (pb.ChatRequest(messages=[_user()], random_seed=-1), "random_seed"),
        (pb.ChatRequest(messages=[_user()], stop=[""]), "stop[0]"),
        (pb.ChatRequest(messages=[_user()], tool_choice="sometimes"), "tool_choice"),
        (pb.ChatRequest(messages=[_user()], tool_choice="any"), "tool_choice: 'any' needs"),
        (
            pb.ChatRequest(messages=[_user()], response_format=pb.ResponseFormat(type="xml")),
            "response_format.type",
        ),
        (
            pb.ChatRequest(
                messages=[_user()], response_format=pb.ResponseFormat(type="json_schema")
            ),
            "response_format.json_schema: required when response_format.type is json_schema",
        ),
        (
            pb.ChatRequest(
                messages=[_user()],
                response_format=pb.ResponseFormat(
                    type="json_object", json_schema=pb.JsonSchema(name="a", schema="{}")
                ),
            ),
            "response_format.json_schema: set, but response_format.type is 'json_object'",
        ),
        (
            pb.ChatRequest(messages=[_user()], response_format=_json_schema("{oops")),
            "response_format.json_schema.schema: not valid JSON",
        ),
        (
            pb.ChatRequest(messages=[_user()], response_format=_json_schema("[1]")),
            "response_format.json_schema.schema: must be a JSON object",
        ),
        (
            pb.ChatRequest(messages=[_user()], response_format=_json_schema('{"type": 5}')),
            "response_format.json_schema.schema: not a valid JSON Schema",
        ),
        (
            pb.ChatRequest(messages=[_user()], response_format=_json_schema("{}", name="")),
            "response_format.json_schema.name: required",
        ),
        (
            pb.ChatRequest(
                messages=[_user()],
                tools=[WEATHER],
                response_format=pb.ResponseFormat(type="json_object"),
            ),
            "response_format.type: json_object with tools needs tool_choice 'none'",
        ),
        (
            pb.ChatRequest(
                messages=[_user()],
                tools=[pb.Tool(function=pb.Function(name="f", parameters='{"type": 5}'))],
            ),
            "tools: ",
        ),
        (
            pb.ChatRequest(
                messages=[_user()],
                tools=[pb.Tool(function=pb.Function(name="f", parameters="[1]"))],
            ),
            "tools[0].function.parameters: must be a JSON object",
        ),
        (
            pb.ChatRequest(messages=[_user()], tools=[pb.Tool(function=pb.Function(name=""))]),
            "tools[0].function.name",
        ),
    ],
)
def test_invalid_requests_name_the_field(
    codec: ChatCodec, request_: pb.ChatRequest, needle: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        codec.encode(request_)
    assert str(err.value).startswith(needle), str(err.value)


def test_streamed_deltas_rebuild_the_text(codec: ChatCodec) -> None:
    text = "Bonjour, ça va? 東京 🦜 fin"
    tokens = _tokens(codec, text)
    deltas = _run(CompletionAssembler(codec.decode), tokens)
    assert "".join(d.text for d in deltas) == codec.decode(tokens)
    assert all("\ufffd" not in d.text for d in deltas)  # never half a UTF-8 character
    assert deltas[-1].finish_reason == "length"


def test_stop_string_across_tokens_is_cut_and_held_back(codec: ChatCodec) -> None:
    tokens = _tokens(codec, "one two three END four five")
    assembler = CompletionAssembler(codec.decode, stop=("END",))
    deltas = _run(assembler, tokens)
    text = "".join(d.text for d in deltas)
    assert text == "one two three "
    assert deltas[-1].finish_reason == "stop"
    assert assembler.completion_tokens < len(tokens)  # stopped early
    held = CompletionAssembler(codec.decode, stop=("three END",))
    partial = _run(held, _tokens(codec, "one two three"))
    assert "".join(d.text for d in partial) == "one two three"  # flushed at the finish


def test_tool_calls_are_parsed_into_structured_calls(codec: ChatCodec) -> None:
    payload = '[{"name": "get_weather", "arguments": {"city": "Nice"}}]'
    tokens = [codec.tool_calls_id, *_tokens(codec, payload), codec.raw.eos_id]
    assembler = CompletionAssembler(codec.decode, tool_calls_id=codec.tool_calls_id, seed=3)
    deltas = _run(assembler, tokens, finish="stop")
    assert all(not d.text for d in deltas)
    final = deltas[-1]
    assert final.finish_reason == "tool_calls"
    (call,) = final.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Nice"}
    assert len(call.id) == 9 and call.id.isalnum()


def test_forced_tool_mode_and_malformed_calls(codec: ChatCodec) -> None:
    forced = CompletionAssembler(
        codec.decode, tool_calls_id=codec.tool_calls_id, forced_tool_call=True
    )
    deltas = _run(forced, _tokens(codec, '[{"name": "f", "arguments": "{}"}]'), finish="stop")
    assert deltas[-1].finish_reason == "tool_calls"
    broken = CompletionAssembler(codec.decode, tool_calls_id=codec.tool_calls_id)
    tokens = [codec.tool_calls_id, *_tokens(codec, '[{"name": "f", "argu')]
    deltas = _run(broken, tokens, finish="length")
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].text.startswith('[{"name"')  # handed back as text, nothing lost


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", '[{"arguments": {}}]', '[{"name": "f", "arguments": 3}]']
)
def test_parse_tool_calls_rejects_non_calls(text: str) -> None:
    assert parse_tool_calls(text, random.Random(0)) is None


def test_parse_tool_calls_accepts_string_arguments_and_single_object() -> None:
    calls = parse_tool_calls('{"name": "f", "arguments": "{\\"a\\": 1}"}', random.Random(0))
    assert calls is not None and json.loads(calls[0].arguments) == {"a": 1}


def test_codec_from_checkpoint_dir(tiny_model_dir: Path) -> None:
    from tramontane_workers.models.loading import find_tokenizer

    codec = ChatCodec(find_tokenizer(tiny_model_dir), max_model_len=64)
    assert codec.raw.n_words == 32768


@pytest.mark.parametrize("group", [1, 2, 3, 50])
def test_grouping_of_tokens_does_not_change_the_answer(codec: ChatCodec, group: int) -> None:
    tokens = _tokens(codec, "alpha beta gamma STOP delta epsilon")
    assembler = CompletionAssembler(codec.decode, stop=("STOP",))
    text = ""
    for i in range(0, len(tokens), group):
        chunk = tokens[i : i + group]
        finish = "length" if i + group >= len(tokens) else None
        text += assembler.feed(TokenStep(chunk, finish)).text  # type: ignore[arg-type]
        if assembler.done:
            break
    one_by_one = CompletionAssembler(codec.decode, stop=("STOP",))
    reference = "".join(d.text for d in _run(one_by_one, tokens))
    assert text == reference == "alpha beta gamma "
    assert assembler.completion_tokens == one_by_one.completion_tokens
