"""A small real gRPC server implementing `tramontane.v1.Inference`, standing for one member
cluster's Serve ingress in router tests and benchmarks.

It answers deterministically: the content names the worker and echoes what it was asked
(`"<worker>|<model>|<last user message>"`), split into one chunk per word when streamed. A
test can make it fail (`fail_next` with a status code), slow (`delay_s` before the first
chunk, `token_delay_s` between chunks), fail every request for one model or adapter version
(`failing[model] = code`: a bad canary) or slow for one (`model_delay_s`), and read what it saw: each call's request and
metadata (`calls`) and which calls were cancelled by the caller (`cancelled`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc


@dataclass
class Call:
    method: str
    request: pb.ChatRequest
    metadata: dict[str, str]
    deadline_s: float | None  # time remaining when the call arrived


@dataclass
class FakeWorker(pb_grpc.InferenceServicer):
    name: str
    models: tuple[str, ...] = ("tiny",)
    adapters: tuple[str, ...] = ()
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    words: int = 4  # completion length, in words/tokens
    running: int = 0
    waiting: int = 0
    calls: list[Call] = field(default_factory=list)
    cancelled: list[Call] = field(default_factory=list)
    failures: list[grpc.StatusCode] = field(default_factory=list)
    failing: dict[str, grpc.StatusCode] = field(default_factory=dict)  # model -> code
    failed_at: list[float] = field(default_factory=list)  # monotonic times of `failing` hits
    model_delay_s: dict[str, float] = field(default_factory=dict)  # more delay for a model
    server: grpc.aio.Server | None = None
    port: int = 0

    # ------------------------------------------------------------------------ control
    def fail_next(self, code: grpc.StatusCode, times: int = 1) -> None:
        self.failures += [code] * times

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeWorker:
        self.server = grpc.aio.server()
        pb_grpc.add_InferenceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            await self.server.stop(grace)

    # ---------------------------------------------------------------------- behaviour
    def _record(self, method: str, request: pb.ChatRequest, context: Any) -> Call:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        call = Call(method, request, metadata, context.time_remaining())
        self.calls.append(call)
        return call

    async def _check(self, request: pb.ChatRequest, context: Any) -> None:
        if self.failures:
            code = self.failures.pop(0)
            await context.abort(code, f"{self.name}: injected {code.name}")
        if request.model in self.failing:
            self.failed_at.append(time.monotonic())
            code = self.failing[request.model]
            await context.abort(code, f"{self.name}: {request.model} fails ({code.name})")
        known = set(self.models) | set(self.adapters)
        if request.model not in known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model: {request.model!r} unknown")
        if not request.messages:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "messages: required")

    def _words(self, request: pb.ChatRequest) -> list[str]:
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        text = f"{self.name}|{request.model}|{last}"
        limit = request.max_tokens if request.HasField("max_tokens") else self.words
        return ([text] + [f" w{i}" for i in range(1, self.words)])[: max(1, limit)]

    def _usage(self, request: pb.ChatRequest, completion: int) -> pb.Usage:
        prompt = sum(len(m.content.split()) + 3 for m in request.messages)
        return pb.Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    async def Chat(self, request: pb.ChatRequest, context: Any) -> pb.ChatResponse:
        call = self._record("Chat", request, context)
        await self._check(request, context)
        try:
            extra = self.model_delay_s.get(request.model, 0.0)
            await asyncio.sleep(self.delay_s + extra + self.token_delay_s * self.words)
        except asyncio.CancelledError:
            self.cancelled.append(call)
            raise
        words = self._words(request)
        return pb.ChatResponse(
            id=f"cmpl-{len(self.calls)}",
            object="chat.completion",
            created=int(time.time()),
            model=request.model,
            choices=[
                pb.Choice(
                    index=0,
                    message=pb.Message(role="assistant", content="".join(words)),
                    finish_reason="length" if len(words) < self.words else "stop",
                )
            ],
            usage=self._usage(request, len(words)),
        )

    async def ChatStream(
        self, request: pb.ChatRequest, context: Any
    ) -> AsyncIterator[pb.ChatChunk]:
        call = self._record("ChatStream", request, context)
        await self._check(request, context)
        words = self._words(request)
        try:
            await asyncio.sleep(self.delay_s)
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(self.token_delay_s)
                last = i == len(words) - 1
                yield pb.ChatChunk(
                    id="chunk",
                    object="chat.completion.chunk",
                    created=int(time.time()),
                    model=request.model,
                    choices=[
                        pb.ChunkChoice(
                            index=0,
                            delta=pb.DeltaMessage(role="assistant" if i == 0 else "", content=word),
                            finish_reason=("length" if len(words) < self.words else "stop")
                            if last
                            else "",
                        )
                    ],
                    usage=self._usage(request, i + 1),
                )
        except asyncio.CancelledError:
            self.cancelled.append(call)
            raise

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            object="list",
            data=[pb.ModelCard(id=m, object="model", kind="base") for m in self.models],
        )

    async def GetStats(self, request: Any, context: Any) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(
            replica_id=self.name,
            model=self.models[0],
            queue_depth=self.waiting,
            running_requests=self.running,
        )
