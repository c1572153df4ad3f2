"""Per-tenant limits through the real router: requests and tokens per minute, concurrency,
reserve and settle for streams that finish, fail and are cancelled, 429s through both SDKs."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from test_grpc_routing import Client, auth, request, until

from conftest import ACME_KEY, GLOBEX_KEY, platform, tenant
from tramontane_router.sources import StaticSource


def limited(objects: list[dict[str, Any]], **quotas: Any) -> list[dict[str, Any]]:
    """`objects` with acme's Tenant given these quotas."""
    out = [o for o in objects if not (o["kind"] == "Tenant" and o["metadata"]["name"] == "acme")]
    return [*out, tenant("acme", ["acme-ml"], ["acme-key"], **quotas)]


def tokens_used(router: Any, tenant_name: str = "acme") -> float:
    return next(d.used for d in router.limiter.demands()
                if d.tenant == tenant_name and d.limit == "tokens")  # fmt: skip


async def test_requests_per_minute_through_both_sdks(workers: Any, routers: Any) -> None:
    west, gx = await workers("west"), await workers("gx")
    router = await routers(limited(platform(west, west, gx), requestsPerMinute=2))
    base = f"http://127.0.0.1:{router.http_port}"
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=ACME_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        await client.chat.completions.create(model="tiny", messages=messages)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="tiny", messages=messages, stream=True)
    assert "requestsPerMinute" in str(err.value)
    assert 55 <= int(err.value.response.headers["retry-after"]) <= 60
    mistral = Mistral(api_key=ACME_KEY, server_url=base)
    with pytest.raises(SDKError) as refused:
        await mistral.chat.complete_async(model="tiny", messages=messages)
    assert refused.value.status_code == 429
    grpc_client = Client(router.grpc_port)
    with pytest.raises(grpc.aio.AioRpcError) as rpc:
        await grpc_client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requestsPerMinute" in (rpc.value.details() or "")
    assert dict(tuple(rpc.value.trailing_metadata() or ()))["retry-after"] in {str(s) for s in range(55, 61)}
    # Another tenant is not affected, and refused requests never reached a worker.
    await grpc_client.stub.Chat(request(), metadata=auth(GLOBEX_KEY))
    assert len(west.calls) == 2
    await grpc_client.close()


async def test_tokens_reserved_and_settled_however_streams_end(workers: Any, routers: Any) -> None:
    west = await workers("west", token_delay_s=0.3, words=6)
    router = await routers(limited(platform(west, west, west), tokensPerMinute=300))
    client = Client(router.grpc_port)
    ask = request(max_tokens=100)

    # Two streams in flight reserve their worst case (~110 each): a third does not fit.
    first = client.stub.ChatStream(ask, metadata=auth(ACME_KEY))
    second = client.stub.ChatStream(ask, metadata=auth(ACME_KEY))
    await first.read()
    await second.read()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(ask, metadata=auth(ACME_KEY))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tokensPerMinute" in (err.value.details() or "")

    # The second is cancelled (settled to what it was sent), the first finishes (settled to
    # its real usage): the room comes back, nothing leaks.
    second.cancel()
    await until(lambda: len(west.cancelled) == 1)
    finished = []
    while (chunk := await first.read()) != grpc.aio.EOF:
        finished.append(chunk)
    first_usage = finished[-1].usage.total_tokens
    await until(lambda: tokens_used(router) <= first_usage + 20)
    reply = await client.stub.Chat(ask, metadata=auth(ACME_KEY))

    # A stream that fails before its first token settles to nothing.
    west.fail_next(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in client.stub.ChatStream(ask, metadata=auth(ACME_KEY)):
            pass
    cancelled_usage = tokens_used(router) - first_usage - reply.usage.total_tokens
    assert 0 < cancelled_usage <= 10  # the prompt and the one chunk the cancelled stream got
    await client.close()


async def test_concurrent_requests(workers: Any, routers: Any) -> None:
    west = await workers("west", delay_s=0.5)
    router = await routers(limited(platform(west, west, west), maxConcurrentRequests=1))
    client = Client(router.grpc_port)
    slow = asyncio.ensure_future(client.stub.Chat(request(), metadata=auth(ACME_KEY)))
    await until(lambda: len(west.calls) == 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert "maxConcurrentRequests" in (err.value.details() or "")
    await slow
    await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    await client.close()


async def test_a_changed_tenant_applies_at_once(workers: Any, routers: Any) -> None:
    west = await workers("west")
    objects = platform(west, west, west)
    source = StaticSource(limited(objects, requestsPerMinute=1))
    router = await routers(source)
    client = Client(router.grpc_port)
    await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    source.update(limited(objects, requestsPerMinute=5))
    await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    source.update(objects)  # no quota: unlimited
    for _ in range(10):
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    await client.close()


async def test_a_flooding_tenant_does_not_starve_another(workers: Any, routers: Any) -> None:
    """Both tenants' models run on the same saturated pool (one slot): acme floods with 40
    requests, globex sends 4 after them; globex's are served in acme's gaps, not after."""
    from tramontane_router.dataplane import DataPlaneSettings

    shared = await workers("shared", delay_s=0.02)
    router = await routers(
        platform(shared, shared, shared),
        dataplane=DataPlaneSettings(slots_per_replica=1),
    )
    client = Client(router.grpc_port)
    flood = [asyncio.ensure_future(client.stub.Chat(request(max_tokens=4), metadata=auth(ACME_KEY)))
             for _ in range(40)]  # fmt: skip
    await until(lambda: router.plane.queues.waiting >= 30)
    polite = [asyncio.ensure_future(client.stub.Chat(request(max_tokens=4), metadata=auth(GLOBEX_KEY)))
              for _ in range(4)]  # fmt: skip
    await asyncio.gather(*flood, *polite)
    order = [c.metadata["x-tramontane-tenant"] for c in shared.calls]
    assert order.count("globex") == 4
    assert max(i for i, t in enumerate(order) if t == "globex") < 10, order
    await client.close()
