"""Stream batching for the gRPC path: merge chunks that arrive within a short interval.

Every streamed message costs the Serve path a hop replica -> proxy -> client; merging the
chunks produced within `interval_s` (the first chunk always goes alone, at once, so time to
first token is unchanged) bounds the messages per stream per second. The merged text is the
concatenation, so a batched stream still equals the unary answer.

The source is read by one task into a buffer; the stream wakes once per batch (at the batch's
deadline, or when the finishing chunk arrives), not once per chunk, and builds one message
per batch: per token, the only work is the source's own plus an append.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from tramontane_workers.contract import inference_pb2 as pb

DEFAULT_INTERVAL_S = 0.05


def merge_chunks(first: pb.ChatChunk, later: pb.ChatChunk) -> pb.ChatChunk:
    """One chunk saying what `first` then `later` say (later usage and finish win)."""
    return merge_all([first, later])


def merge_all(chunks: list[pb.ChatChunk]) -> pb.ChatChunk:
    """One chunk saying what `chunks` say in order (the last usage and finish reason win)."""
    if len(chunks) == 1:
        return chunks[0]
    merged = pb.ChatChunk()
    merged.CopyFrom(chunks[0])
    a = merged.choices[0]
    texts = [a.delta.content]
    for later in chunks[1:]:
        b = later.choices[0]
        texts.append(b.delta.content)
        if b.delta.tool_calls:
            a.delta.tool_calls.extend(b.delta.tool_calls)
        a.finish_reason = b.finish_reason or a.finish_reason
    a.delta.content = "".join(texts)
    merged.usage.CopyFrom(chunks[-1].usage)
    return merged


class _Pump:
    """Reads `source` into `buffer` in its own task; wakes a waiting reader when a chunk
    arrives (if it asked for any chunk), when a finishing chunk arrives, or at the end."""

    def __init__(self, source: AsyncIterator[pb.ChatChunk]) -> None:
        self.source = source
        self.buffer: list[pb.ChatChunk] = []
        self.ended = False  # the source is exhausted (or failed: `error`)
        self.error: Exception | None = None
        self.finishing = False  # a chunk with a finish reason is in `buffer`
        self._waiter: asyncio.Future[None] | None = None
        self._any_chunk = False
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for chunk in self.source:
                self.buffer.append(chunk)
                if chunk.choices[0].finish_reason:
                    self.finishing = True
                    self._wake()
                elif self._any_chunk:
                    self._wake()
        except Exception as exc:  # re-raised by the reader, after what came before it
            self.error = exc
        finally:
            self.ended = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def wait(self, timeout: float | None, *, any_chunk: bool) -> None:
        """Until a chunk arrives (if `any_chunk`), a finishing chunk, the end, or `timeout`."""
        if self.ended or self.finishing or (any_chunk and self.buffer):
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._any_chunk = any_chunk
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter, self._any_chunk = None, False
            if timer is not None:
                timer.cancel()

    def take(self, first_only: bool) -> list[pb.ChatChunk]:
        """The buffered chunks up to the first that finishes (or just the first chunk)."""
        end = 1 if first_only else len(self.buffer)
        for i, chunk in enumerate(self.buffer[:end]):
            if chunk.choices[0].finish_reason:
                end = i + 1
                break
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        self.finishing = any(c.choices[0].finish_reason for c in self.buffer)
        return out


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def batch_stream(
    chunks: AsyncIterator[pb.ChatChunk], interval_s: float = DEFAULT_INTERVAL_S
) -> AsyncGenerator[pb.ChatChunk, None]:
    """Yield `chunks`, merging those that arrive within `interval_s` of a batch's start."""
    source = aiter(chunks)
    pump = _Pump(source)
    first = True
    try:
        while True:
            await pump.wait(None, any_chunk=True)
            if not pump.buffer:
                if pump.error is not None:
                    raise pump.error
                return
            if not first:  # the batch started now: gather until its deadline
                await pump.wait(interval_s, any_chunk=False)
                if pump.error is not None:
                    raise pump.error
            batch = pump.take(first_only=first)
            first = False
            yield merge_all(batch)
    finally:
        if not pump.task.done():
            pump.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump.task
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
