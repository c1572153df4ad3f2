"""Stream batching: the first chunk alone, then chunks merged per interval, nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.serve.batching import batch_stream, merge_chunks


def _chunk(text: str, done: int, finish: str = "") -> pb.ChatChunk:
    return pb.ChatChunk(
        id="c",
        choices=[pb.ChunkChoice(delta=pb.DeltaMessage(content=text), finish_reason=finish)],
        usage=pb.Usage(prompt_tokens=3, completion_tokens=done, total_tokens=3 + done),
    )


async def _source(texts: list[str], pause_s: float = 0.0) -> AsyncIterator[pb.ChatChunk]:
    for i, text in enumerate(texts):
        if pause_s:
            await asyncio.sleep(pause_s)
        yield _chunk(text, i + 1, "length" if i == len(texts) - 1 else "")


async def test_fast_chunks_merge_after_the_first() -> None:
    texts = ["a", "b", "c", "d", "e"]
    out = [c async for c in batch_stream(_source(texts), interval_s=1.0)]
    assert [c.choices[0].delta.content for c in out] == ["a", "bcde"]
    assert out[-1].choices[0].finish_reason == "length"
    assert out[-1].usage.completion_tokens == 5


async def test_slow_chunks_pass_one_by_one() -> None:
    texts = ["a", "b", "c"]
    out = [c async for c in batch_stream(_source(texts, pause_s=0.2), interval_s=0.01)]
    assert [c.choices[0].delta.content for c in out] == texts


async def test_closing_early_closes_the_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[pb.ChatChunk]:
        try:
            i = 0
            while True:
                i += 1
                await asyncio.sleep(0.001)
                yield _chunk("x", i)
        finally:
            closed.set()

    stream = batch_stream(endless(), interval_s=0.01)
    assert (await anext(stream)).choices[0].delta.content == "x"
    await anext(stream)
    await stream.aclose()
    assert closed.is_set()


def test_merge_keeps_tool_calls_and_later_usage() -> None:
    call = pb.ToolCall(id="abcdefghi", function=pb.FunctionCall(name="f", arguments="{}"))
    later = _chunk("", 4, "tool_calls")
    later.choices[0].delta.tool_calls.append(call)
    merged = merge_chunks(_chunk("hi", 2), later)
    assert merged.choices[0].delta.content == "hi"
    assert merged.choices[0].delta.tool_calls[0].id == "abcdefghi"
    assert (merged.choices[0].finish_reason, merged.usage.completion_tokens) == ("tool_calls", 4)


async def test_a_source_error_reaches_the_reader_after_the_first_chunk() -> None:
    async def failing() -> AsyncIterator[pb.ChatChunk]:
        yield _chunk("a", 1)
        yield _chunk("b", 2)
        raise RuntimeError("engine failed")

    stream = batch_stream(failing(), interval_s=1.0)
    assert (await anext(stream)).choices[0].delta.content == "a"
    try:
        await anext(stream)
    except RuntimeError as exc:
        assert str(exc) == "engine failed"
    else:
        raise AssertionError("the error was swallowed")


async def test_a_finishing_chunk_ends_its_batch_at_once() -> None:
    async def source() -> AsyncIterator[pb.ChatChunk]:
        yield _chunk("a", 1)
        yield _chunk("b", 2)
        yield _chunk("c", 3, "stop")
        await asyncio.sleep(5)  # never reached: the reader has what it needs

    start = asyncio.get_running_loop().time()
    out = [c.choices[0].delta.content for c in await _collect(batch_stream(source(), 2.0))]
    assert out == ["a", "bc"]
    assert asyncio.get_running_loop().time() - start < 1.0


async def _collect(stream: AsyncGenerator[pb.ChatChunk, None]) -> list[pb.ChatChunk]:
    """The chunks up to the finishing one; then the stream is closed (as Serve's client does)."""
    out = []
    async for chunk in stream:
        out.append(chunk)
        if chunk.choices[0].finish_reason:
            break
    await stream.aclose()
    return out
