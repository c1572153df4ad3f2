"""Evaluation datasets: Mistral chat JSONL -> samples (prompt, expected answer), checked first.

Each line is checked by the training-data rules (`contract.datasets_rules.check_record` with
`evaluation=True`, which also admits `response_format`, then mistral-common's own validation
through `datasets_tokens.encode_record`), so a line is accepted or refused with the same
line-level error as in a fine-tuning dataset. The conversation up to its last message is the
prompt; the last message, an assistant message, is the expected answer (text or tool calls).

`encode_samples` then encodes every prompt with the model's own tokenizer as serving does
(`ChatCodec`, which needs only the tokenizer file) and the expected answer's tokens for
teacher forcing: all of this runs before any model is loaded, so a bad dataset fails fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from tramontane_workers.chat.encode import ChatCodec, EncodedChat
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract.datasets import (
    LineError,
    check_raw,
    decode_line,
    open_uri,
    raw_lines,
)
from tramontane_workers.contract.datasets_rules import Violation, check_record
from tramontane_workers.contract.datasets_tokens import encode_record
from tramontane_workers.errors import InvalidRequest
from tramontane_workers.evaluate.metrics import Call

MAX_LISTED_ERRORS = 10
SHORT_INPUT_CHARS = 200


class DatasetInvalid(ValueError):
    """The dataset has bad lines; the message lists the first ones with their line numbers."""

    def __init__(self, uri: str, errors: list[LineError], bad_lines: int) -> None:
        listed = "; ".join(f"line {e.line}: {e.describe()}" for e in errors[:MAX_LISTED_ERRORS])
        more = bad_lines - min(len(errors), MAX_LISTED_ERRORS)
        tail = f" (and {more} more bad lines)" if more > 0 else ""
        super().__init__(f"dataset {uri}: {bad_lines} bad line(s): {listed}{tail}")
        self.errors = errors
        self.bad_lines = bad_lines


@dataclass(frozen=True)
class Sample:
    """One dataset line: the prompt as a chat request, and what the answer should be."""

    line: int
    request: pb.ChatRequest  # greedy (temperature 0); max_tokens is set at generation time
    expected: pb.Message  # the last assistant message
    expected_text: str | None  # None when the expected answer is a tool call
    expected_calls: tuple[Call, ...]
    schema: dict[str, Any] | None  # response_format json_schema's schema
    input: str  # the last user message, shortened

    @property
    def expects_tool_call(self) -> bool:
        return self.expected_text is None


@dataclass(frozen=True)
class EncodedSample:
    """A sample with its prompt encoded (as serving would) and its answer's tokens."""

    sample: Sample
    chat: EncodedChat
    answer_tokens: list[int]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(chunk["text"] for chunk in content)
    return content if isinstance(content, str) else ""


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _pb_message(msg: dict[str, Any]) -> pb.Message:
    calls = [
        pb.ToolCall(
            id=call["id"],
            type="function",
            function=pb.FunctionCall(
                name=call["function"]["name"],
                arguments=_arguments_text(call["function"].get("arguments", {})),
            ),
        )
        for call in msg.get("tool_calls") or []
    ]
    return pb.Message(
        role=msg["role"],
        content=_text(msg.get("content")),
        tool_calls=calls,
        tool_call_id=msg.get("tool_call_id") or "",
        name=msg.get("name") or "",
    )


def _response_format(value: dict[str, Any] | None) -> pb.ResponseFormat | None:
    if value is None:
        return None
    spec = value.get("json_schema")
    if value["type"] != "json_schema" or not isinstance(spec, dict):
        return pb.ResponseFormat(type=value["type"])
    return pb.ResponseFormat(
        type="json_schema",
        json_schema=pb.JsonSchema(
            name=spec.get("name", ""),
            description=spec.get("description") or "",
            schema=json.dumps(spec["schema"]),
            strict=bool(spec.get("strict", False)),
        ),
    )


def shorten(text: str, limit: int = SHORT_INPUT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_sample(line: int, record: dict[str, Any], seed: int) -> Sample:
    """A checked record as a sample (the record passed `check_record` and mistral-common)."""
    *prompt, last = record["messages"]
    tools = [
        pb.Tool(
            type="function",
            function=pb.Function(
                name=t["function"]["name"],
                description=t["function"].get("description") or "",
                parameters=json.dumps(t["function"].get("parameters", {})),
            ),
        )
        for t in record.get("tools") or []
    ]
    request = pb.ChatRequest(
        model="evaluation",
        messages=[_pb_message(m) for m in prompt],
        temperature=0.0,
        random_seed=seed,
        tools=tools,
    )
    response_format = _response_format(record.get("response_format"))
    if response_format is not None:
        request.response_format.CopyFrom(response_format)
    calls = tuple(
        Call(c["function"]["name"], c["function"].get("arguments", {}))
        for c in last.get("tool_calls") or []
    )
    users = [m for m in prompt if m["role"] == "user"]
    schema = None
    if response_format is not None and response_format.type == "json_schema":
        schema = record["response_format"]["json_schema"]["schema"]
    return Sample(
        line=line,
        request=request,
        expected=_pb_message(last),
        expected_text=None if calls else _text(last.get("content")),
        expected_calls=calls,
        schema=schema,
        input=shorten(_text(users[-1]["content"]) if users else ""),
    )


def _check(raw: bytes | None) -> dict[str, Any] | Violation | None:
    """The record of one line, its first violation, or None for a blank line."""
    if raw is None or not raw.strip():
        result = check_raw(raw)  # the training rules' wording for over-long and blank lines
        return result if isinstance(result, Violation) else None
    record = decode_line(raw)
    if isinstance(record, Violation):
        return record
    violation = check_record(record, evaluation=True)
    if violation is not None:
        return violation
    encoded = encode_record(record)  # mistral-common's own checks, as for training
    if isinstance(encoded, Violation):
        return encoded
    return dict(record)


def load_samples(uri: str, *, max_samples: int | None = None, seed: int = 0) -> list[Sample]:
    """Every line checked; the first `max_samples` samples. Raises DatasetInvalid (bad lines,
    or no sample at all) or DatasetUnreadable."""
    samples: list[Sample] = []
    errors: list[LineError] = []
    bad = 0
    with open_uri(uri) as stream:
        for number, raw in raw_lines(stream):
            result = _check(raw)
            if result is None:
                continue
            if isinstance(result, Violation):
                bad += 1
                if len(errors) < MAX_LISTED_ERRORS:
                    errors.append(LineError(line=number, path=result.path, message=result.message))
                continue
            if max_samples is None or len(samples) < max_samples:
                samples.append(to_sample(number, result, seed))
    if bad:
        raise DatasetInvalid(uri, errors, bad)
    if not samples:
        raise DatasetInvalid(uri, [LineError(line=1, message="the dataset holds no sample")], 1)
    return samples


def encode_samples(uri: str, samples: list[Sample], codec: ChatCodec) -> list[EncodedSample]:
    """Encode prompts and answers with the model's tokenizer; DatasetInvalid names bad lines."""
    encoded: list[EncodedSample] = []
    errors: list[LineError] = []
    for sample in samples:
        try:
            chat = codec.encode(sample.request)
            answer = codec.assistant_tokens(sample.expected)
        except InvalidRequest as exc:
            errors.append(LineError(line=sample.line, message=str(exc)))
            continue
        encoded.append(EncodedSample(sample, chat, answer))
    if errors:
        raise DatasetInvalid(uri, errors, len(errors))
    return encoded


def with_max_tokens(sample: EncodedSample, max_tokens: int, context: int) -> EncodedChat:
    """The sample's request with at most `max_tokens` new tokens, within the model's context
    (raises InvalidRequest naming the line when the prompt leaves no room)."""
    room = context - len(sample.chat.prompt_tokens)
    if room < 1:
        raise InvalidRequest(
            f"line {sample.sample.line}: the prompt is {len(sample.chat.prompt_tokens)} tokens, "
            f"the model's context {context}"
        )
    sampling = dataclasses.replace(sample.chat.sampling, max_tokens=min(max_tokens, room))
    return dataclasses.replace(sample.chat, sampling=sampling)
