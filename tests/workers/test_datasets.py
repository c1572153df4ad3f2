"""Dataset validation: every rule of issue 5, exact line numbers and paths, no false positives."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
from mistral_common.protocol.instruct.normalize import InstructRequestNormalizer
from tests.conftest import EXAMPLES_DIR

from tramontane_cli.commands import dataset as dataset_cmd
from tramontane_workers.contract.datasets import (
    DatasetUnreadable,
    check_line,
    validate_stream,
    validate_uri,
)
from tramontane_workers.contract.datasets_rules import Violation
from tramontane_workers.contract.datasets_tokens import encode_request, parse_record, tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def user(text: str = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: Any = "Hello", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def call(call_id: str = "a1b2c3d4e", name: str = "get_weather") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def calls(*items: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": list(items)}


def tool(call_id: str = "a1b2c3d4e", text: str = "sunny") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


GOOD: dict[str, dict[str, Any]] = {
    "user-assistant": {"messages": [user(), assistant()]},
    "system first": {"messages": [{"role": "system", "content": "Be brief."}, user(), assistant()]},
    "multi-turn": {"messages": [user(), assistant(), user("And?"), assistant("Bye")]},
    "weight 0 and 1": {
        "messages": [user(), assistant(weight=0), user("Again"), assistant(weight=1)]
    },
    "weight as float": {"messages": [user(), assistant(weight=1.0)]},
    "text chunks": {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, assistant()]
    },
    "tool round trip": {
        "messages": [user(), calls(call()), tool(), assistant("Sunny")],
        "tools": [WEATHER_TOOL],
    },
    "two parallel calls": {
        "messages": [
            user(),
            calls(call(), call("B2c3d4e5f")),
            tool(),
            tool("B2c3d4e5f"),
            assistant(),
        ],
        "tools": [WEATHER_TOOL],
    },
    "final tool call unanswered": {"messages": [user(), calls(call())], "tools": [WEATHER_TOOL]},
    "arguments as object": {
        "messages": [
            user(),
            calls(
                {
                    "id": "a1b2c3d4e",
                    "function": {"name": "get_weather", "arguments": {"city": "Nice"}},
                }
            ),
        ],
        "tools": [WEATHER_TOOL],
    },
    "tools null": {"messages": [user(), assistant()], "tools": None},
    "unicode": {"messages": [user("Où est Sète ? 🌊"), assistant("Dans l'Hérault.")]},
}

BAD: dict[str, tuple[Any, str, str]] = {
    # name: (line object, expected path, a fragment of the expected message)
    "not an object": ([1, 2], "", "JSON object"),
    "unknown field": ({"messages": [user(), assistant()], "extra": 1}, "extra", "unknown field"),
    "no messages": ({"tools": []}, "messages", "required"),
    "messages not a list": ({"messages": {}}, "messages", "must be an array"),
    "empty messages": ({"messages": []}, "messages", "not be empty"),
    "message not an object": ({"messages": ["hi", assistant()]}, "messages[0]", "object"),
    "unknown role": (
        {"messages": [user(), {"role": "bot", "content": "x"}]},
        "messages[1].role",
        "bot",
    ),
    "starts with assistant": ({"messages": [assistant()]}, "messages[0].role", "starts with"),
    "starts with tool": ({"messages": [tool(), assistant()]}, "messages[0].role", "starts with"),
    "ends with user": (
        {"messages": [user(), assistant(), user()]},
        "messages[2].role",
        "last message",
    ),
    "system after assistant": (
        {"messages": [user(), assistant(), {"role": "system", "content": "x"}, assistant()]},
        "messages[2].role",
        "cannot follow",
    ),
    "user without content": (
        {"messages": [{"role": "user"}, assistant()]},
        "messages[0].content",
        "required",
    ),
    "content a number": (
        {"messages": [user(), assistant(), user(), assistant(5)]},
        "messages[3].content",
        "string",
    ),
    "image chunk": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                assistant(),
            ]
        },
        "messages[0].content[0].type",
        "text chunks",
    ),
    "assistant empty": (
        {"messages": [user(), {"role": "assistant"}]},
        "messages[1]",
        "content or tool_calls",
    ),
    "assistant content and calls": (
        {"messages": [user(), {**assistant(), "tool_calls": [call()]}], "tools": [WEATHER_TOOL]},
        "messages[1]",
        "not both",
    ),
    "weight 0.5": ({"messages": [user(), assistant(weight=0.5)]}, "messages[1].weight", "0 or 1"),
    "weight true": ({"messages": [user(), assistant(weight=True)]}, "messages[1].weight", "0 or 1"),
    "weight on user": (
        {"messages": [{**user(), "weight": 1}, assistant()]},
        "messages[0].weight",
        "not permitted",
    ),
    "short call id": (
        {"messages": [user(), calls(call("abc"))], "tools": [WEATHER_TOOL]},
        "messages[1].tool_calls[0].id",
        "9 letters",
    ),
    "call id with dash": (
        {"messages": [user(), calls(call(), call("abcd-fghi"))], "tools": [WEATHER_TOOL]},
        "messages[1].tool_calls[1].id",
        "9 letters",
    ),
    "duplicate call id": (
        {"messages": [user(), calls(call(), call())], "tools": [WEATHER_TOOL]},
        "messages[1].tool_calls[1].id",
        "used twice",
    ),
    "undefined function": (
        {"messages": [user(), calls(call(name="get_time"))], "tools": [WEATHER_TOOL]},
        "messages[1].tool_calls[0].function.name",
        "not defined in tools",
    ),
    "call without tools": (
        {"messages": [user(), calls(call())]},
        "messages[1].tool_calls[0].function.name",
        "not defined in tools",
    ),
    "tool answers nothing": (
        {
            "messages": [user(), calls(call()), tool("zzzzzzzzz"), assistant()],
            "tools": [WEATHER_TOOL],
        },
        "messages[2].tool_call_id",
        "matches no preceding call",
    ),
    "tool answers twice": (
        {"messages": [user(), calls(call()), tool(), tool(), assistant()], "tools": [WEATHER_TOOL]},
        "messages[3].tool_call_id",
        "already answered",
    ),
    "tool without id": (
        {
            "messages": [user(), calls(call()), {"role": "tool", "content": "x"}, assistant()],
            "tools": [WEATHER_TOOL],
        },
        "messages[2].tool_call_id",
        "required",
    ),
    "call left unanswered": (
        {"messages": [user(), calls(call()), assistant()], "tools": [WEATHER_TOOL]},
        "messages[2]",
        "no tool answer",
    ),
    "tool after user": (
        {
            "messages": [user(), calls(call()), tool(), user(), tool(), assistant()],
            "tools": [WEATHER_TOOL],
        },
        "messages[4].role",
        "cannot follow",
    ),
    "duplicate tool definition": (
        {"messages": [user(), assistant()], "tools": [WEATHER_TOOL, WEATHER_TOOL]},
        "tools[1].function.name",
        "defined twice",
    ),
    "invalid tool schema": (
        {
            "messages": [user(), calls(call())],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": 5}}}
            ],
        },
        "tools",
        "schema",
    ),
}


@pytest.mark.parametrize("record", GOOD.values(), ids=GOOD.keys())
def test_good_conversation_passes(record: dict[str, Any]) -> None:
    result = check_line(json.dumps(record).encode())
    assert not isinstance(result, Violation), result
    assert result.trainable > 0 and len(result.tokens) > result.trainable


@pytest.mark.parametrize(("record", "path", "fragment"), BAD.values(), ids=BAD.keys())
def test_bad_conversation_names_field(record: Any, path: str, fragment: str) -> None:
    result = check_line(json.dumps(record).encode())
    assert isinstance(result, Violation)
    assert result.path == path
    assert fragment in result.message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"messages": [', "invalid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"null", "JSON object"),
        (b'"text"', "JSON object"),
    ],
)
def test_undecodable_lines_are_clear_errors(raw: bytes, fragment: str) -> None:
    result = check_line(raw)
    assert isinstance(result, Violation) and fragment in result.message


def test_line_numbers_are_exact_and_blank_lines_are_not_errors() -> None:
    good = json.dumps(GOOD["tool round trip"]).encode()
    bad = json.dumps(BAD["weight 0.5"][0]).encode()
    data = b"\n".join([good, bad, b"", good, b"{oops", good, bad]) + b"\n"
    summary = validate_stream(io.BytesIO(data), "mem")
    assert [e.line for e in summary.errors] == [2, 5, 7]
    assert summary.errors[0].path == "messages[1].weight"
    assert (summary.lines, summary.conversations, summary.bad_lines) == (7, 3, 3)


def test_summary_counts_real_v3_tokens() -> None:
    summary = validate_stream(io.BytesIO(json.dumps(GOOD["user-assistant"]).encode()), "mem")
    # <s> [INST] ▁Hi [/INST] ▁Hello </s>
    expected = tokenizer().instruct_tokenizer.tokenizer.encode("Hello", bos=False, eos=False)
    assert summary.tokens == 5 + len(expected)
    assert summary.trainable_tokens == len(expected) + 1  # the answer and its </s>


def test_max_errors_caps_the_summary_but_not_the_callback() -> None:
    bad = json.dumps(BAD["ends with user"][0]).encode()
    seen: list[int] = []
    summary = validate_stream(
        io.BytesIO(b"\n".join([bad] * 30)),
        "mem",
        max_errors=5,
        on_error=lambda e: seen.append(e.line),
    )
    assert summary.bad_lines == 30 and len(summary.errors) == 5 and seen == list(range(1, 31))


@pytest.mark.parametrize(
    "name", ["weight 0 and 1", "tool round trip", "system first", "multi-turn"]
)
def test_masked_encoding_matches_mistral_common(name: str) -> None:
    request = parse_record(GOOD[name])
    assert not isinstance(request, Violation)
    encoded = encode_request(request)
    # mistral-common's own encoding of the same request (its default normalizer, no weights)
    instruct = InstructRequestNormalizer.normalizer().from_chat_completion_request(request)
    assert encoded.tokens == tokenizer().instruct_tokenizer.encode_instruct(instruct).tokens
    decoded = tokenizer().decode(
        [t for t, m in zip(encoded.tokens, encoded.mask, strict=True) if m]
    )
    if name == "weight 0 and 1":
        assert decoded == "Hello"  # the weight-0 "Hello" is masked, the weight-1 one is trained
        assert encoded.tokens.count(tokenizer().instruct_tokenizer.tokenizer.eos_id) == 2


def test_example_files(tmp_path: Path) -> None:
    good = validate_uri((EXAMPLES_DIR / "datasets" / "good.jsonl").as_uri())
    assert good.ok and good.conversations == good.lines == 5
    bad = validate_uri(str(EXAMPLES_DIR / "datasets" / "bad.jsonl"))
    assert [e.line for e in bad.errors] == [2, 3, 4, 5, 6, 7] and bad.conversations == 1
    with pytest.raises(DatasetUnreadable):
        validate_uri((tmp_path / "missing.jsonl").as_uri())


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    dataset_cmd.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def test_cli_prints_file_line_message_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = EXAMPLES_DIR / "datasets" / "good.jsonl", EXAMPLES_DIR / "datasets" / "bad.jsonl"
    assert _cli("dataset", "validate", str(good)) == 0
    assert "5 conversations" in capsys.readouterr().out
    assert _cli("dataset", "validate", str(good), str(bad)) == 1
    out = capsys.readouterr().err.splitlines()  # bad lines go to stderr, summaries to stdout
    assert f"{bad}:3: messages[1].weight: must be 0 or 1, got 0.5" in out
    assert sum(line.startswith(f"{bad}:") and line.split(":")[1].isdigit() for line in out) == 6
    assert _cli("dataset", "validate", str(good), str(tmp_path / "nope.jsonl")) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["nosuchscheme://bucket/train.jsonl", "file:///no/such/file.jsonl"])
def test_unreadable_uris_raise_dataset_unreadable(uri: str) -> None:
    with pytest.raises(DatasetUnreadable, match=uri.split("://")[0]):
        validate_uri(uri)
