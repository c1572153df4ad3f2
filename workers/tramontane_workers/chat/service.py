"""The chat data plane: one engine + one codec -> proto responses, unary and streamed.

The gRPC servicer (Serve deployment) and the benchmark's direct path both call this, so they
differ only by transport. A unary answer is the streamed answer collected.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tramontane_workers.chat.assemble import CompletionAssembler, Delta, ParsedToolCall
from tramontane_workers.chat.encode import ChatCodec, EncodedChat
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.engines.base import Engine, GenerationRequest


@dataclass(frozen=True)
class _Event:
    delta: Delta
    usage: pb.Usage


def _tool_calls(calls: tuple[ParsedToolCall, ...]) -> list[pb.ToolCall]:
    return [
        pb.ToolCall(
            id=c.id,
            type="function",
            index=i,
            function=pb.FunctionCall(name=c.name, arguments=c.arguments),
        )
        for i, c in enumerate(calls)
    ]


class ChatService:
    """Answers `ChatRequest`s with one engine; `adapter` picks a loaded LoRA adapter."""

    def __init__(self, engine: Engine, codec: ChatCodec) -> None:
        self.engine = engine
        self.codec = codec

    async def _events(self, request: pb.ChatRequest, adapter: str | None) -> AsyncIterator[_Event]:
        async for event in self._encoded_events(self.codec.encode(request), adapter):
            yield event

    async def _encoded_events(
        self, encoded: EncodedChat, adapter: str | None
    ) -> AsyncIterator[_Event]:
        assembler = CompletionAssembler(
            self.codec.decode,
            stop=encoded.stop,
            tool_calls_id=self.codec.tool_calls_id if encoded.parse_tool_calls else None,
            forced_tool_call=encoded.forced_tool_call,
            seed=encoded.sampling.seed,
        )
        prompt = len(encoded.prompt_tokens)
        steps = self.engine.generate(
            GenerationRequest(uuid.uuid4().hex, encoded.prompt_tokens, encoded.sampling, adapter)
        )
        try:
            async for step in steps:
                delta = assembler.feed(step)
                done = assembler.completion_tokens
                usage = pb.Usage(
                    prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done
                )
                yield _Event(delta, usage)
                if assembler.done:
                    break
        finally:
            await steps.aclose()  # leaving early (stop string, cancelled stream) frees the slot

    async def stream(
        self, request: pb.ChatRequest, adapter: str | None = None
    ) -> AsyncIterator[pb.ChatChunk]:
        """Server-streaming chat: one chunk per delta with text or a finish reason."""
        chunk_id, created, first = uuid.uuid4().hex, int(time.time()), True
        async for event in self._events(request, adapter):
            d = event.delta
            if not (d.text or d.tool_calls or d.finish_reason):
                continue
            delta = pb.DeltaMessage(
                role="assistant" if first else "",
                content=d.text,
                tool_calls=_tool_calls(d.tool_calls),
            )
            first = False
            yield pb.ChatChunk(
                id=chunk_id,
                object="chat.completion.chunk",
                created=created,
                model=request.model,
                choices=[pb.ChunkChoice(index=0, delta=delta, finish_reason=d.finish_reason or "")],
                usage=event.usage,
            )

    async def answer(self, encoded: EncodedChat, adapter: str | None = None) -> Answer:
        """The whole answer to an already encoded request (what `complete` returns, unwrapped;
        the evaluator encodes its dataset once, before any model is loaded)."""
        return await _collect(self._encoded_events(encoded, adapter))

    async def complete(
        self, request: pb.ChatRequest, adapter: str | None = None
    ) -> pb.ChatResponse:
        """Unary chat: the stream, collected."""
        got = await _collect(self._events(request, adapter))
        message = pb.Message(
            role="assistant", content=got.text, tool_calls=_tool_calls(got.tool_calls)
        )
        return pb.ChatResponse(
            id=uuid.uuid4().hex,
            object="chat.completion",
            created=int(time.time()),
            model=request.model,
            choices=[pb.Choice(index=0, message=message, finish_reason=got.finish_reason)],
            usage=got.usage,
        )


@dataclass(frozen=True)
class Answer:
    """A collected answer: text or tool calls, why it ended, and the token usage."""

    text: str
    tool_calls: tuple[ParsedToolCall, ...]
    finish_reason: str
    usage: pb.Usage


async def _collect(events: AsyncIterator[_Event]) -> Answer:
    text: list[str] = []
    calls: tuple[ParsedToolCall, ...] = ()
    finish, usage = "", pb.Usage()
    async for event in events:
        text.append(event.delta.text)
        calls += event.delta.tool_calls
        finish = event.delta.finish_reason or finish
        usage = event.usage
    return Answer("".join(text), calls, finish, usage)
