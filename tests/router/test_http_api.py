"""The HTTP front through the clients tenants use: the official `openai` and `mistralai` SDKs
(async, retries off) against a real router on loopback over small real gRPC workers, plus raw
aiohttp where the wire itself is the point (SSE framing, disconnects).

Covered: unary and streamed chat (content from the right worker, usage, the model name the
client sent), model listing, the error classes each SDK raises (401, 404, 422, 429 with
`Retry-After`), every request field reaching the worker, tenant isolation probed by guessing,
and a client disconnect cancelling the worker call at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import openai
import pytest
from fake_worker import FakeWorker
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, MistralError, SDKError
from mistralai.client.models import BaseModelCard, ChatCompletionResponse, FTModelCard

from conftest import (
    ACME_KEY,
    GLOBEX_KEY,
    cluster,
    deployment,
    platform,
    secret,
    tenant,
)
from tramontane_router.errors import RateLimited
from tramontane_router.server import Router
from tramontane_router.table import Route, TenantView
from tramontane_workers.contract import inference_pb2 as pb

MakeWorker = Callable[..., Awaitable[FakeWorker]]
MakeRouter = Callable[..., Awaitable[Router]]
# Typed Any: one literal serves both SDKs' (different) message TypedDicts.
HELLO: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
HELLO_PROMPT_TOKENS = (2 + 3) + (2 + 3)  # FakeWorker: words + 3 per message
TAIL = " w1 w2 w3"  # FakeWorker's completion after "<worker>|<model>|<last user message>"


@dataclass
class Stack:
    router: Router
    west: FakeWorker  # acme's pools: west and north
    north: FakeWorker
    gx: FakeWorker  # globex's only pool

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.router.http_port}"

    @property
    def acme(self) -> list[FakeWorker]:
        return [self.west, self.north]

    def worker(self, name: str) -> FakeWorker:
        return {w.name: w for w in (self.west, self.north, self.gx)}[name]


@pytest.fixture
async def stack(workers: MakeWorker, routers: MakeRouter) -> Stack:
    west = await workers("west", adapters=("support",))
    north = await workers("north", adapters=("support",))
    gx = await workers("gx")
    return Stack(await routers(platform(west, north, gx)), west, north, gx)


def one_pool(acme: FakeWorker, globex: FakeWorker) -> list[dict[str, Any]]:
    """The standard tenants with acme's model on one pool only: one worker answers all."""
    return [
        secret("acme-key", ACME_KEY),
        secret("globex-key", GLOBEX_KEY),
        tenant("acme", ["acme-ml"], ["acme-key"]),
        tenant("globex", ["globex-ml"], ["globex-key"]),
        cluster("west", "westeurope"),
        deployment("chat", "acme-ml", {"west": acme.address}, adapters=["support"]),
        deployment("chat", "globex-ml", {"west": globex.address}),
    ]


def oai(base: str, key: str = ACME_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


@asynccontextmanager
async def mistral(base: str, key: str | None = ACME_KEY) -> AsyncIterator[Mistral]:
    async with Mistral(api_key=key, server_url=base) as client:  # no retry_config: no retries
        yield client


def mtext(answer: ChatCompletionResponse) -> str:
    """The text of a `mistralai` answer's first choice."""
    message = answer.choices[0].message
    assert message is not None and isinstance(message.content, str)
    return message.content


def answered_by(stack: Stack, content: str, model: str, question: str) -> FakeWorker:
    """The worker that wrote `content`, after checking the content is its answer to
    `question` for `model` and that the worker did get that call."""
    name, _, rest = content.partition("|")
    assert rest == f"{model}|{question}{TAIL}", content
    worker = stack.worker(name)
    assert worker.calls, name
    assert worker.calls[-1].request.messages[-1].content == question
    return worker


async def eventually(predicate: Callable[[], bool], timeout_s: float = 2.0) -> float:
    """Seconds until `predicate` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# ------------------------------------------------------------------------------ unary chat
@pytest.mark.parametrize("model", ["tiny", "tiny:support"])
async def test_openai_chat(stack: Stack, model: str) -> None:
    client = oai(stack.base)
    answer = await client.chat.completions.create(model=model, messages=HELLO)
    served = model.partition(":")[2] or model  # the worker sees the bare adapter name
    content = answer.choices[0].message.content or ""
    worker = answered_by(stack, content, served, "hello there")
    assert worker in stack.acme
    assert not stack.gx.calls
    assert answer.model == model
    assert answer.object == "chat.completion"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == HELLO_PROMPT_TOKENS
    assert answer.usage.completion_tokens == 4
    assert answer.usage.total_tokens == HELLO_PROMPT_TOKENS + 4


@pytest.mark.parametrize("model", ["tiny", "tiny:support"])
async def test_mistral_chat(stack: Stack, model: str) -> None:
    async with mistral(stack.base) as client:
        answer = await client.chat.complete_async(model=model, messages=HELLO)
    served = model.partition(":")[2] or model
    content = mtext(answer)
    assert answered_by(stack, content, served, "hello there") in stack.acme
    assert answer.model == model
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == HELLO_PROMPT_TOKENS
    assert answer.usage.completion_tokens == 4
    assert answer.usage.total_tokens == HELLO_PROMPT_TOKENS + 4


async def test_max_tokens_cuts_the_answer_and_says_length(stack: Stack) -> None:
    answer = await oai(stack.base).chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=2
    )
    assert (answer.choices[0].message.content or "").endswith("|tiny|hello there w1")
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 2


async def test_an_answer_goes_back_as_history_unchanged(stack: Stack) -> None:
    """Multi-turn as the SDK docs write it: the answer object itself appended to the history.
    The strict schema must accept everything the SDKs send back from our own responses."""
    client = oai(stack.base)
    history: list[Any] = [{"role": "user", "content": "one"}]
    first = await client.chat.completions.create(model="tiny", messages=history)
    history += [first.choices[0].message, {"role": "user", "content": "two"}]
    second = await client.chat.completions.create(model="tiny", messages=history)
    assert (second.choices[0].message.content or "").endswith("|tiny|two" + TAIL)
    async with mistral(stack.base) as mclient:
        history = [{"role": "user", "content": "one"}]
        answer = await mclient.chat.complete_async(model="tiny:support", messages=history)
        history += [answer.choices[0].message, {"role": "user", "content": "two"}]
        again = await mclient.chat.complete_async(model="tiny:support", messages=history)
    worker = answered_by(stack, mtext(again), "support", "two")
    assert [m.role for m in worker.calls[-1].request.messages] == ["user", "assistant", "user"]
    assert worker.calls[-1].request.messages[1].content == mtext(answer)


# ------------------------------------------------------------------------------ streaming
@pytest.fixture
async def single(workers: MakeWorker, routers: MakeRouter) -> Stack:
    """acme on one pool (west), so a unary and a streamed answer come from the same worker."""
    west = await workers("west", adapters=("support",))
    unused = await workers("north")
    gx = await workers("gx")
    return Stack(await routers(one_pool(west, gx)), west, unused, gx)


@pytest.mark.parametrize("model", ["tiny", "tiny:support"])
async def test_openai_stream_concatenates_to_the_unary_answer(single: Stack, model: str) -> None:
    client = oai(single.base)
    unary = await client.chat.completions.create(model=model, messages=HELLO)
    stream = await client.chat.completions.create(
        model=model,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert len(chunks) == 4  # one per word
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == unary.choices[0].message.content
    )
    assert all(c.model == model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]
    assert [c.usage is None for c in chunks] == [True, True, True, False]
    last = chunks[-1].usage
    assert last is not None and unary.usage is not None
    assert (last.prompt_tokens, last.completion_tokens, last.total_tokens) == (
        unary.usage.prompt_tokens,
        unary.usage.completion_tokens,
        unary.usage.total_tokens,
    )
    assert single.west.calls[-1].method == "ChatStream"


async def test_mistral_stream_concatenates_to_the_unary_answer(single: Stack) -> None:
    async with mistral(single.base) as client:
        unary = await client.chat.complete_async(model="tiny:support", messages=HELLO)
        events = [
            e async for e in await client.chat.stream_async(model="tiny:support", messages=HELLO)
        ]
    chunks = [e.data for e in events]
    text = "".join(
        c.choices[0].delta.content for c in chunks if isinstance(c.choices[0].delta.content, str)
    )
    assert text == mtext(unary) == f"west|support|hello there{TAIL}"
    assert all(c.model == "tiny:support" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == unary.usage.prompt_tokens


async def test_stream_on_the_wire_ends_with_done(single: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{single.base}/v1/chat/completions",
            json={"model": "tiny", "messages": HELLO, "stream": True},
            headers={"Authorization": f"Bearer {ACME_KEY}"},
        ) as res,
    ):
        assert res.status == 200
        assert res.headers["Content-Type"].startswith("text/event-stream")
        text = await res.text()
    assert text.endswith("\n\ndata: [DONE]\n\n")
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events.count("data: [DONE]") == 1
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert [p["object"] for p in payloads] == ["chat.completion.chunk"] * 4
    assert "usage" in payloads[-1] and all("usage" not in p for p in payloads[:-1])


@pytest.mark.parametrize("client", ["openai", "mistral", "wire"])
async def test_an_error_after_the_first_chunk_ends_the_stream_with_an_error_event(
    workers: MakeWorker, routers: MakeRouter, client: str
) -> None:
    """A stream that has begun cannot change its status: a worker dying mid-answer ends it
    with an error event, which each client reports as an error (never as a complete answer)."""
    west, gx = await workers("west", token_delay_s=0.5), await workers("gx")
    router = await routers(one_pool(west, gx))
    base = f"http://127.0.0.1:{router.http_port}"
    if client == "openai":
        stream = await oai(base).chat.completions.create(model="tiny", messages=HELLO, stream=True)
        first = await anext(aiter(stream))
        assert (first.choices[0].delta.content or "").startswith("west|tiny|")
        await west.stop(0)  # the worker dies mid-answer
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
        assert not isinstance(caught.value, openai.APIStatusError)  # an event, not a status
        assert caught.value.message and "Traceback" not in caught.value.message
    elif client == "mistral":
        async with mistral(base) as mclient:
            events = aiter(await mclient.chat.stream_async(model="tiny", messages=HELLO))
            first_event = await anext(events)
            assert first_event.data.choices[0].delta.content == "west|tiny|hello there"
            await west.stop(0)
            with pytest.raises(MistralError):
                async for _ in events:
                    pass
    else:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base}/v1/chat/completions",
                json={"model": "tiny", "messages": HELLO, "stream": True},
                headers={"Authorization": f"Bearer {ACME_KEY}"},
            ) as res,
        ):
            assert res.status == 200
            assert (await res.content.readuntil(b"\n\n")).startswith(b"data: {")
            await west.stop(0)
            rest = (await res.read()).decode()
        events = [e for e in rest.split("\n\n") if e]
        assert "data: [DONE]" not in events  # an error is not a complete answer
        last = json.loads(events[-1].removeprefix("data: "))
        assert last["object"] == "error"
        assert last["error"]["message"] == last["message"] and last["message"]
        assert int(last["code"]) >= 400
        assert "Traceback" not in rest


# ------------------------------------------------------------------------------ models
async def test_openai_lists_each_tenants_models(stack: Stack) -> None:
    acme = [m async for m in oai(stack.base).models.list()]
    assert [m.id for m in acme] == ["tiny", "tiny:support"]
    assert {m.id: m.owned_by for m in acme} == {"tiny": "acme", "tiny:support": "acme"}
    assert [(m.model_extra or {}).get("type") for m in acme] == ["base", "fine-tuned"]
    globex = [m async for m in oai(stack.base, GLOBEX_KEY).models.list()]
    assert [m.id for m in globex] == ["tiny"]
    assert (await oai(stack.base).models.retrieve("tiny:support")).id == "tiny:support"
    with pytest.raises(openai.NotFoundError):
        await oai(stack.base, GLOBEX_KEY).models.retrieve("tiny:support")


async def test_mistral_parses_the_model_list(stack: Stack) -> None:
    async with mistral(stack.base) as client:
        listed = await client.models.list_async()
        card = await client.models.retrieve_async(model_id="tiny:support")
    assert listed.data is not None
    base, adapter = listed.data
    assert isinstance(base, BaseModelCard) and base.id == "tiny" and base.type == "base"
    assert isinstance(adapter, FTModelCard) and adapter.id == "tiny:support"
    assert adapter.type == "fine-tuned" and adapter.root == "tiny"
    assert isinstance(card, FTModelCard) and card.id == "tiny:support"
    async with mistral(stack.base, GLOBEX_KEY) as client:
        listed = await client.models.list_async()
    assert listed.data is not None
    assert [getattr(m, "id", None) for m in listed.data] == ["tiny"]


# ------------------------------------------------------------------------------ errors
async def test_401_without_or_with_a_wrong_key(stack: Stack) -> None:
    no_header = {"Authorization": openai.Omit()}
    for key, headers, says in [
        (ACME_KEY, no_header, "missing API key"),
        ("acme-key-0123456789abcdeX", None, "invalid API key"),
    ]:
        with pytest.raises(openai.AuthenticationError) as caught:
            await oai(stack.base, key).chat.completions.create(
                model="tiny", messages=HELLO, extra_headers=headers
            )
        assert caught.value.response.request.headers.get("authorization") != f"Bearer {ACME_KEY}"
        assert caught.value.status_code == 401
        assert says in caught.value.message
        assert caught.value.response.headers["www-authenticate"] == "Bearer"
        assert ACME_KEY[:-1] not in caught.value.response.text  # a key is never echoed
    for mkey, says in [(None, "missing API key"), ("acme-key-0123456789abcdeX", "invalid API key")]:
        async with mistral(stack.base, mkey) as client:
            with pytest.raises(SDKError) as raised:
                await client.chat.complete_async(model="tiny", messages=HELLO)
            assert raised.value.status_code == 401
            assert says in raised.value.body
            with pytest.raises(SDKError) as raised:
                await client.models.list_async()
            assert raised.value.status_code == 401
    assert not any(w.calls for w in (stack.west, stack.north, stack.gx))


async def test_404_unknown_model(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await oai(stack.base).chat.completions.create(model="huge", messages=HELLO)
    assert "'huge'" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "model"
    async with mistral(stack.base) as client:
        with pytest.raises(SDKError) as raised:
            await client.chat.complete_async(model="huge", messages=HELLO)
    assert raised.value.status_code == 404


async def test_422_names_the_field(stack: Stack) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await oai(stack.base).chat.completions.create(model="tiny", messages=HELLO, temperature=5)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "temperature"
    assert caught.value.body["message"].startswith("temperature: ")
    async with mistral(stack.base) as client:
        cases: list[tuple[dict[str, Any], list[str]]] = [
            ({"temperature": 5.0}, ["body", "temperature"]),
            ({"max_tokens": 0}, ["body", "max_tokens"]),
            ({"presence_penalty": 0.5}, ["body", "presence_penalty"]),
            ({"n": 2}, ["body", "n"]),
        ]
        for fields, loc in cases:
            with pytest.raises(HTTPValidationError) as raised:
                await client.chat.complete_async(model="tiny", messages=HELLO, **fields)
            assert raised.value.status_code == 422
            assert raised.value.data.detail is not None
            assert list(raised.value.data.detail[0].loc) == loc, fields
    assert not any(w.calls for w in stack.acme)


@dataclass
class Permit:
    settled: list[pb.Usage | None] = field(default_factory=list)

    def settle(self, usage: pb.Usage | None) -> None:
        self.settled.append(usage)


@dataclass
class TokenBudget:
    """A `Limits` that admits `allow` requests and refuses the rest, naming the limit."""

    allow: int
    permits: list[Permit] = field(default_factory=list)
    asked: list[tuple[str, str, str]] = field(default_factory=list)

    async def admit(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, deadline: float
    ) -> Permit:
        self.asked.append((tenant.name, route.model_id, request.model))
        if len(self.permits) >= self.allow:
            raise RateLimited("tokens per minute: 1000 of 1000 used; retry later", retry_after_s=7)
        permit = Permit()
        self.permits.append(permit)
        return permit


async def test_429_with_retry_after_and_permits_settled_with_the_usage(
    workers: MakeWorker, routers: MakeRouter
) -> None:
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    budget = TokenBudget(allow=3)
    router = await routers(platform(west, north, gx), limits=budget)
    base = f"http://127.0.0.1:{router.http_port}"
    client = oai(base)

    answer = await client.chat.completions.create(model="tiny", messages=HELLO)
    assert answer.usage is not None
    (usage,) = budget.permits[0].settled
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    stream = await client.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    chunks = [c async for c in stream]
    (usage,) = budget.permits[1].settled
    assert usage is not None and chunks[-1].usage is not None
    assert usage.completion_tokens == chunks[-1].usage.completion_tokens == 4
    west.fail_next(grpc.StatusCode.INVALID_ARGUMENT)
    north.fail_next(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(model="tiny", messages=HELLO)
    assert budget.permits[2].settled == [None]  # failed: settled, with no usage

    calls = len(west.calls) + len(north.calls)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="tiny", messages=HELLO)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert "tokens per minute" in caught.value.message
    with pytest.raises(openai.RateLimitError):  # a stream is refused before it starts
        await client.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    async with mistral(base) as mclient:
        with pytest.raises(SDKError) as raised:
            await mclient.chat.complete_async(model="tiny", messages=HELLO)
    assert raised.value.status_code == 429
    assert raised.value.headers["retry-after"] == "7"
    assert len(west.calls) + len(north.calls) == calls  # refused requests reach no worker
    assert len(budget.permits) == 3
    assert budget.asked[0] == ("acme", "tiny", "tiny")


# ------------------------------------------------------------------------------ fields
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}
FORECAST: dict[str, Any] = {
    "type": "object",
    "properties": {"summary": {"type": "string"}},
    "required": ["summary"],
}

# Typed Any: one literal serves both SDKs' (different) tool TypedDicts.
TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER},
    }
]


async def test_openai_fields_reach_the_worker(single: Stack) -> None:
    await oai(single.base).chat.completions.create(
        model="tiny:support",
        messages=HELLO,
        tools=TOOLS,
        tool_choice="required",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "forecast", "schema": FORECAST, "strict": True},
        },
        seed=42,
        max_tokens=3,
        temperature=0.25,
        top_p=0.5,
        stop=["\n\n", "END"],
    )
    call = single.west.calls[-1]
    request = call.request
    assert request.model == "support"  # the bare adapter name
    assert call.metadata["application"] == "acme-ml.chat"
    assert call.metadata["x-tramontane-tenant"] == "acme"
    assert call.metadata["multiplexed_model_id"] == "support"
    (tool,) = request.tools
    assert (tool.type, tool.function.name, tool.function.description) == (
        "function",
        "get_weather",
        "Weather.",
    )
    assert json.loads(tool.function.parameters) == WEATHER
    assert request.tool_choice == "required"
    assert request.response_format.type == "json_schema"
    assert request.response_format.json_schema.name == "forecast"
    assert request.response_format.json_schema.strict is True
    assert json.loads(request.response_format.json_schema.schema) == FORECAST
    assert request.HasField("random_seed") and request.random_seed == 42
    assert request.max_tokens == 3
    assert request.temperature == pytest.approx(0.25)
    assert request.top_p == pytest.approx(0.5)
    assert list(request.stop) == ["\n\n", "END"]
    assert not request.safe_prompt
    assert [(m.role, m.content) for m in request.messages] == [
        (m["role"], m["content"]) for m in HELLO
    ]


async def test_mistral_fields_reach_the_worker(single: Stack) -> None:
    history: Any = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is "},
                {"type": "text", "text": "the weather"},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "abcDEF123",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {
            "role": "tool",
            "content": "sunny",
            "tool_call_id": "abcDEF123",
            "name": "get_weather",
        },
        {"role": "user", "content": "and tomorrow?"},
    ]
    async with mistral(single.base) as client:
        await client.chat.complete_async(
            model="tiny",
            messages=history,
            tools=TOOLS,
            tool_choice="any",
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "forecast", "schema_definition": FORECAST, "strict": True},
            },
            random_seed=7,
            safe_prompt=True,
            max_tokens=5,
            temperature=0.0,
            top_p=1.0,
            stop="END",
        )
    call = single.west.calls[-1]
    request = call.request
    assert request.model == "tiny"
    assert call.metadata["application"] == "acme-ml.chat"
    assert call.metadata["x-tramontane-tenant"] == "acme"
    assert "multiplexed_model_id" not in call.metadata  # a base model: no adapter to pick
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool", "user"]
    assert request.messages[1].content == "what is the weather"  # text chunks joined
    (tool_call,) = request.messages[2].tool_calls
    assert (tool_call.id, tool_call.type, tool_call.function.name) == (
        "abcDEF123",
        "function",
        "get_weather",
    )
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}
    assert request.messages[3].tool_call_id == "abcDEF123"
    assert request.messages[3].name == "get_weather"
    assert json.loads(request.tools[0].function.parameters) == WEATHER
    assert request.tool_choice == "any"
    assert json.loads(request.response_format.json_schema.schema) == FORECAST
    assert request.response_format.json_schema.strict is True
    assert request.random_seed == 7
    assert request.safe_prompt is True
    assert request.max_tokens == 5
    assert request.HasField("temperature") and request.temperature == 0.0  # greedy, not unset
    assert request.top_p == 1.0
    assert list(request.stop) == ["END"]


async def test_unset_fields_stay_unset(single: Stack) -> None:
    await oai(single.base).chat.completions.create(model="tiny", messages=HELLO)
    request = single.west.calls[-1].request
    for name in ("temperature", "top_p", "max_tokens", "random_seed"):
        assert not request.HasField(name), name
    assert not request.tools and not request.stop and request.tool_choice == ""


# ------------------------------------------------------------------------------ isolation
GUESSES = [
    "tiny:support",  # acme's adapter, asked for by globex
    "../acme-ml/chat",
    "acme-ml/tiny",
    "acme-ml/chat",
    "chat",
    "tiny:",
    ":support",
    "support",
    "TINY",
    "Tiny:support",
    " tiny",
    "tiny ",
    "tiny:support:support",
    "tiny\x00",
    "*",
]


async def test_globex_cannot_reach_acme_by_guessing(stack: Stack) -> None:
    client = oai(stack.base, GLOBEX_KEY)
    with pytest.raises(openai.NotFoundError) as nowhere:
        await client.chat.completions.create(model="tiny:nothere", messages=HELLO)
    for guess in GUESSES:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model=guess, messages=HELLO)
        message = caught.value.message
        # Exactly what a name that exists nowhere gets: nothing says it exists elsewhere.
        assert message == nowhere.value.message.replace(repr("tiny:nothere"), repr(guess)), guess
        assert "acme" not in message.replace(guess, "")
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model=guess, messages=HELLO, stream=True)
    with pytest.raises(openai.NotFoundError) as card:
        await client.models.retrieve("tiny:support")
    assert "acme" not in card.value.message
    assert not any(w.calls for w in (stack.west, stack.north, stack.gx))


async def test_acme_guesses_get_404_too(stack: Stack) -> None:
    client = oai(stack.base)
    for guess in [g for g in GUESSES if g != "tiny:support"] + ["globex-ml/chat", "tiny:globex"]:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model=guess, messages=HELLO)
    assert not any(w.calls for w in (stack.west, stack.north, stack.gx))


async def test_same_model_name_each_key_reaches_only_its_own_workers(stack: Stack) -> None:
    acme, globex = oai(stack.base), oai(stack.base, GLOBEX_KEY)
    for i in range(6):
        a, g = await asyncio.gather(
            acme.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"a{i}"}]
            ),
            globex.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"g{i}"}]
            ),
        )
        assert answered_by(stack, a.choices[0].message.content or "", "tiny", f"a{i}") in stack.acme
        assert answered_by(stack, g.choices[0].message.content or "", "tiny", f"g{i}") is stack.gx
    assert len(stack.gx.calls) == 6
    assert len(stack.west.calls) + len(stack.north.calls) == 6
    assert {c.metadata["x-tramontane-tenant"] for c in stack.gx.calls} == {"globex"}
    assert {c.metadata["x-tramontane-tenant"] for w in stack.acme for c in w.calls} == {"acme"}
    assert all(c.request.messages[-1].content.startswith("g") for c in stack.gx.calls)


# ------------------------------------------------------------------------------ disconnects
async def abandon(base: str, payload: dict[str, Any], *, first_event: bool) -> None:
    """POST, then go away (close the connection): after ~0.3 s, or once the first SSE event
    has arrived."""
    session = aiohttp.ClientSession()
    got_first = asyncio.Event()

    async def call() -> None:
        async with session.post(
            f"{base}/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {ACME_KEY}"},
        ) as res:
            assert res.status == 200
            event = await res.content.readuntil(b"\n\n")
            assert event.startswith(b"data: {")
            got_first.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(call())
    if first_event:
        await asyncio.wait_for(got_first.wait(), 5)
    else:
        await asyncio.sleep(0.3)
        assert not task.done()
    task.cancel()
    await session.close()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("slow", "stream", "first_event"),
    [
        ({"delay_s": 5}, False, False),  # waiting for a unary answer
        ({"delay_s": 5}, True, False),  # waiting for a stream's first chunk
        ({"token_delay_s": 5}, True, True),  # between chunks, after the first arrived
    ],
    ids=["unary", "stream-before-first-chunk", "stream-mid-answer"],
)
async def test_client_disconnect_cancels_the_worker_call(
    workers: MakeWorker,
    routers: MakeRouter,
    slow: dict[str, float],
    stream: bool,
    first_event: bool,
) -> None:
    west, gx = await workers("west", **slow), await workers("gx")
    router = await routers(one_pool(west, gx))
    base = f"http://127.0.0.1:{router.http_port}"
    payload = {"model": "tiny", "messages": HELLO, "stream": stream}
    await abandon(base, payload, first_event=first_event)
    # The worker would take 5 s more; the disconnect cancels its call well before that.
    await eventually(lambda: len(west.cancelled) == 1, timeout_s=2.0)
    assert west.cancelled[0] is west.calls[0]
    assert west.cancelled[0].method == ("ChatStream" if stream else "Chat")
    # The router is unharmed: the next request (to a fast worker) is answered.
    answer = await oai(base, GLOBEX_KEY).chat.completions.create(model="tiny", messages=HELLO)
    assert (answer.choices[0].message.content or "").startswith("gx|")


# ------------------------------------------------------------------ traces and metrics
async def test_sse_streams_log_no_trace_context_errors(
    stack: Stack, spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The HTTP front reads a stream's first chunk in one task and the rest in another: the
    span must not be made current across them (OpenTelemetry logs a traceback if it is)."""
    caplog.set_level(logging.ERROR)
    body = {"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(f"{stack.base}/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {ACME_KEY}"}) as r:
                assert (await r.text()).endswith("data: [DONE]\n\n")  # fmt: skip
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    call = stack.west.calls[-1] if stack.west.calls else stack.north.calls[-1]
    assert any(
        f"{s.context.trace_id:032x}" in call.metadata["traceparent"]
        for s in spans.get_finished_spans()
    )


async def test_invented_model_names_make_no_metric_series(stack: Stack) -> None:
    from prometheus_client import REGISTRY

    async with aiohttp.ClientSession() as session:
        for i in range(5):
            body = {"model": f"invented-{i}", "messages": [{"role": "user", "content": "x"}]}
            async with session.post(f"{stack.base}/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {ACME_KEY}"}) as r:
                assert r.status == 404  # fmt: skip
    models = {s.labels.get("model") for m in REGISTRY.collect()
              if m.name == "tramontane_router_requests" for s in m.samples}  # fmt: skip
    assert "-" in models and not any(str(m).startswith("invented-") for m in models)
