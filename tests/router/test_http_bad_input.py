"""Bad input at the HTTP front, as a table of raw requests (aiohttp, no SDK smoothing anything
over): each row names the status it must get and a substring the JSON `message` must carry
(the field or the limit at fault). No row may get a 500 or a traceback, and the router must
still answer a good request after the whole table has been thrown at it at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from fake_worker import FakeWorker

from conftest import ACME_KEY, platform
from tramontane_router.dataplane import DataPlaneSettings
from tramontane_router.server import Router

MAX_BODY = 4096
MAX_MESSAGES = 8
CHAT = "/v1/chat/completions"
GOOD_MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = f"Bearer {ACME_KEY}"


def body(**fields: Any) -> bytes:
    """A valid request body with `fields` replaced (a value of ... removes the field)."""
    data: dict[str, Any] = {"model": "tiny", "messages": GOOD_MESSAGES}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def raw(text: str) -> bytes:
    return text.encode()


@dataclass(frozen=True)
class Row:
    id: str
    status: int
    message: str  # a substring of the JSON `message`
    data: bytes | None = None
    chunked: bool = False  # send `data` without Content-Length, in chunks
    method: str = "POST"
    path: str = CHAT
    authorization: str | None = AUTH
    param: str | None = None  # the field the 422 names (`param` and `detail[0].loc`)
    headers: dict[str, str] = field(default_factory=dict)  # response headers expected


TOO_BIG = body(messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}])


def nested(levels: int) -> bytes:
    return raw(
        '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"tools":'
        + "[" * levels
        + "]" * levels
        + "}"
    )


# fmt: off
ROWS = [
    # --- unreadable bodies: 400
    Row("malformed-json", 400, "not valid JSON", raw('{"model": "tiny", ')),
    Row("empty-body", 400, "not valid JSON", b""),
    Row("invalid-utf8", 400, "UTF-8", b'{"model":"tiny","messages":[{"role":"user","content":"\xff\xfe"}]}'),
    Row("nan-literal", 400, "NaN", raw('{"model":"tiny","messages":[{"role":"user","content":"hi"}],"temperature":NaN}')),
    Row("nested-beyond-json-recursion", 400, "nested", nested(1900)),
    Row("nested-beyond-limit", 400, "nested", nested(80)),
    Row("nested-in-tool-parameters", 400, "tools.0.function.parameters", body(tools=[
        {"type": "function", "function": {"name": "f", "parameters": json.loads('{"a":' * 70 + "1" + "}" * 70)}}])),
    # --- not an object
    Row("json-array", 422, "expected a JSON object", raw("[]")),
    Row("json-string", 422, "expected a JSON object", raw('"hello"')),
    # --- unknown fields
    Row("unknown-top-level", 422, "bogus: unknown field", body(bogus=1), param="bogus"),
    Row("unknown-nested", 422, "messages.0.foo: unknown field",
        body(messages=[{"role": "user", "content": "hi", "foo": 1}]), param="messages.0.foo"),
    # --- wrong types and ranges
    Row("model-int", 422, "model", body(model=7), param="model"),
    Row("model-missing", 422, "model", body(model=...), param="model"),
    Row("model-empty", 422, "model: required", body(model=""), param="model"),
    Row("messages-string", 422, "messages", body(messages="hi"), param="messages"),
    Row("messages-missing", 422, "messages", body(messages=...), param="messages"),
    Row("messages-empty", 422, "at least one message", body(messages=[]), param="messages"),
    Row("too-many-messages", 422, f"at most {MAX_MESSAGES}",
        body(messages=GOOD_MESSAGES * (MAX_MESSAGES + 1)), param="messages"),
    Row("bad-role", 422, "messages.0.role", body(messages=[{"role": "wizard", "content": "hi"}]),
        param="messages.0.role"),
    Row("content-int", 422, "messages.0.content",
        body(messages=[{"role": "user", "content": 5}]), param="messages.0.content"),
    Row("lone-surrogate", 422, "messages.0.content",
        raw('{"model":"tiny","messages":[{"role":"user","content":"a\\ud800b"}]}'), param="messages.0.content"),
    Row("lone-surrogate-in-model", 422, "model", raw('{"model":"tiny\\udfff","messages":[{"role":"user","content":"hi"}]}'),
        param="model"),
    Row("temperature-string", 422, "temperature", body(temperature="0.5"), param="temperature"),
    Row("temperature-bool", 422, "temperature", body(temperature=True), param="temperature"),
    Row("temperature-too-high", 422, "temperature", body(temperature=2.5), param="temperature"),
    Row("top-p-zero", 422, "top_p", body(top_p=0), param="top_p"),
    Row("max-tokens-zero", 422, "max_tokens", body(max_tokens=0), param="max_tokens"),
    Row("max-tokens-float", 422, "max_tokens", body(max_tokens=1.5), param="max_tokens"),
    Row("max-tokens-huge", 422, "max_tokens", body(max_tokens=2**40), param="max_tokens"),
    Row("random-seed-huge", 422, "random_seed", body(random_seed=2**70), param="random_seed"),
    Row("tool-call-index-huge", 422, "index", body(messages=[
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "abc123def", "function": {"name": "f", "arguments": "{}"}, "index": 2**40}]},
        {"role": "user", "content": "go on"}]), param="messages.0.tool_calls.0.index"),
    Row("stream-yes", 422, "stream", body(stream="yes"), param="stream"),
    Row("stop-int", 422, "stop", body(stop=5), param="stop"),
    Row("tool-calls-on-user", 422, "only assistant messages",
        body(messages=[{"role": "user", "content": "hi", "tool_calls": [
            {"id": "abc123def", "function": {"name": "f", "arguments": "{}"}}]}]),
        param="messages.0.tool_calls"),
    Row("json-schema-missing", 422, "response_format.json_schema",
        body(response_format={"type": "json_schema"}), param="response_format.json_schema"),
    Row("both-max-tokens", 422, "max_tokens or max_completion_tokens",
        body(max_tokens=4, max_completion_tokens=4), param="max_completion_tokens"),
    Row("both-seeds", 422, "random_seed or seed", body(random_seed=1, seed=1), param="seed"),
    # --- fields the runtime cannot honour: refused, never ignored
    Row("n-2", 422, "n: ", body(n=2), param="n"),
    Row("presence-penalty", 422, "presence_penalty", body(presence_penalty=0.5), param="presence_penalty"),
    Row("frequency-penalty", 422, "frequency_penalty", body(frequency_penalty=-1), param="frequency_penalty"),
    Row("tool-choice-object", 422, "tool_choice",
        body(tool_choice={"type": "function", "function": {"name": "f"}}), param="tool_choice"),
    Row("parallel-tool-calls-false", 422, "parallel_tool_calls", body(parallel_tool_calls=False),
        param="parallel_tool_calls"),
    # --- size limits: 413 with or without a Content-Length
    Row("too-big-content-length", 413, f"at most {MAX_BODY}", TOO_BIG),
    Row("too-big-chunked", 413, f"at most {MAX_BODY}", TOO_BIG, chunked=True),
    # --- auth: 401 before anything else is looked at
    Row("no-auth", 401, "missing API key", body(), authorization=None,
        headers={"WWW-Authenticate": "Bearer"}),
    Row("wrong-key", 401, "invalid API key", body(), authorization="Bearer not-a-key-0123456789abcdef"),
    Row("basic-scheme", 401, "Bearer", body(), authorization="Basic YWNtZTpzZWNyZXQ="),
    Row("bearer-no-key", 401, "missing API key", body(), authorization="Bearer   "),
    Row("no-auth-bad-body", 401, "missing API key", raw("{nope"), authorization=None),
    Row("models-no-auth", 401, "missing API key", None, method="GET", path="/v1/models", authorization=None),
    # --- names and routes
    Row("unknown-model", 404, "'nope'", body(model="nope"), param="model"),
    Row("unknown-model-card", 404, "tiny:nope", None, method="GET", path="/v1/models/tiny:nope"),
    Row("unknown-route", 404, "no such route", body(), path="/v1/nope"),
    Row("get-chat", 405, "method not allowed", None, method="GET", headers={"Allow": "POST"}),
    Row("put-models", 405, "method not allowed", body(), method="PUT", path="/v1/models"),
]
# fmt: on


def chunks(data: bytes, size: int = 1000) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return gen


async def send(base: str, row: Row) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/json"}
    if row.authorization is not None:
        headers["Authorization"] = row.authorization
    data: Any = row.data
    if row.chunked and row.data is not None:
        data = chunks(row.data)()
    async with (
        aiohttp.ClientSession() as session,
        session.request(row.method, base + row.path, data=data, headers=headers) as res,
    ):
        return res.status, dict(res.headers), await res.text()


def check(row: Row, status: int, headers: dict[str, str], text: str) -> None:
    assert "Traceback" not in text
    assert status < 500, f"{row.id}: {status} {text}"
    assert status == row.status, f"{row.id}: {status} {text}"
    answer = json.loads(text)
    assert isinstance(answer, dict)
    assert row.message in answer["message"], answer["message"]
    # The OpenAI shape carries the same error under `error`; `code` is the status.
    assert answer["error"]["message"] == answer["message"]
    assert answer["code"] == str(row.status)
    if row.param is not None:
        assert answer["param"] == row.param
    if status == 422:
        loc = answer["detail"][0]["loc"]
        assert loc[0] == "body"
        if row.param is not None:
            assert ".".join(str(p) for p in loc[1:]) == row.param
    else:
        assert "detail" not in answer
    for name, value in row.headers.items():
        assert headers.get(name) == value, (name, headers)


@pytest.fixture
async def router(
    workers: Callable[..., Awaitable[FakeWorker]], routers: Callable[..., Awaitable[Router]]
) -> Router:
    west, north, globex = (
        await workers("west", adapters=("support",)),
        await workers("north"),
        await workers("gx"),
    )
    return await routers(
        platform(west, north, globex),
        max_body_bytes=MAX_BODY,
        dataplane=DataPlaneSettings(max_messages=MAX_MESSAGES),
    )


def test_the_table_is_big_and_its_ids_unique() -> None:
    assert len(ROWS) >= 25
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_bad_input(router: Router, row: Row) -> None:
    check(row, *await send(f"http://127.0.0.1:{router.http_port}", row))


async def test_the_router_answers_after_the_whole_table_at_once(router: Router) -> None:
    base = f"http://127.0.0.1:{router.http_port}"
    answers = await asyncio.gather(*(send(base, row) for row in ROWS * 2))
    for row, answer in zip(ROWS * 2, answers, strict=True):
        check(row, *answer)
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + CHAT, data=body(), headers={"Authorization": AUTH}) as res,
    ):
        assert res.status == 200
        answer = await res.json()
    assert answer["choices"][0]["message"]["content"].endswith("|tiny|hi w1 w2 w3")
