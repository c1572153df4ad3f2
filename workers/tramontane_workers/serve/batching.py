"""Stream batching for the gRPC path: merge chunks that arrive within a short interval.

Every streamed message costs the Serve path a hop replica -> proxy -> client; merging the
chunks produced within `interval_s` (the first chunk always goes alone, at once, so time to
first token is unchanged) bounds the messages per stream per second. The merged text is the
concatenation, so a batched stream still equals the unary answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from tramontane_workers.contract import inference_pb2 as pb

DEFAULT_INTERVAL_S = 0.05


def merge_chunks(first: pb.ChatChunk, later: pb.ChatChunk) -> pb.ChatChunk:
    """One chunk saying what `first` then `later` say (later usage and finish win)."""
    merged = pb.ChatChunk()
    merged.CopyFrom(first)
    a, b = merged.choices[0], later.choices[0]
    a.delta.content += b.delta.content
    a.delta.tool_calls.extend(b.delta.tool_calls)
    a.finish_reason = b.finish_reason or a.finish_reason
    merged.usage.CopyFrom(later.usage)
    return merged


async def batch_stream(
    chunks: AsyncIterator[pb.ChatChunk], interval_s: float = DEFAULT_INTERVAL_S
) -> AsyncGenerator[pb.ChatChunk, None]:
    """Yield `chunks`, merging those that arrive within `interval_s` of a batch's start."""
    source = aiter(chunks)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[pb.ChatChunk] | None = None
    first = True
    try:
        while True:
            try:
                batch = await (pending if pending is not None else anext(source))
            except StopAsyncIteration:
                return
            pending = None
            if first:
                first = False
                yield batch
                continue
            deadline = loop.time() + interval_s
            while not batch.choices[0].finish_reason and loop.time() < deadline:
                pending = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait({pending}, timeout=deadline - loop.time())
                if not done:
                    break  # `pending` starts the next batch
                future, pending = pending, None
                try:
                    batch = merge_chunks(batch, future.result())
                except StopAsyncIteration:
                    yield batch
                    return
            yield batch
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
