"""Adapter versions through real routers and real gRPC workers: the weighted split, a canary
that fails rolled back to 0 % within seconds with no failed client request, a slow canary
rolled back on its p99, streams in flight through a promotion and a rollback."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import grpc
from canary_harness import (
    CANARY,
    MODEL,
    STABLE,
    V1,
    V2,
    rollback_run,
    versioned,
    worker_kw,
)

from conftest import ACME_KEY
from tramontane_router.sources import StaticSource
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

AUTH = (("authorization", f"Bearer {ACME_KEY}"),)


def ask(text: str = "hi", model: str = MODEL) -> pb.ChatRequest:
    return pb.ChatRequest(model=model, messages=[pb.Message(role="user", content=text)])


def served(*workers: Any) -> collections.Counter[str]:
    return collections.Counter(c.request.model for w in workers for c in w.calls)


async def test_weighted_split_and_the_client_sees_its_own_name(workers: Any, routers: Any) -> None:
    west, north = await workers("west", **worker_kw()), await workers("north", **worker_kw())
    router = await routers(versioned({"west": west.address, "north": north.address}, 10))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        answers = await asyncio.gather(*(stub.Chat(ask(), metadata=AUTH) for _ in range(200)))
    assert {a.model for a in answers} == {MODEL}  # never the version's name
    seen = served(west, north)
    # Smooth weighted round-robin: any 200 requests split within one of 10 %.
    assert abs(seen[CANARY] - 20) <= 1 and seen[CANARY] + seen[STABLE] == 200
    for w in (west, north):
        for call in w.calls:
            assert call.metadata["multiplexed_model_id"] == call.request.model


async def test_unversioned_status_keeps_the_bare_adapter_name(workers: Any, routers: Any) -> None:
    west = await workers("west", adapters=("support",))
    objects = versioned({"west": west.address}, 10)
    del objects[-1]["status"]["adapterVersions"]
    router = await routers(objects)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        await stub.Chat(ask(), metadata=AUTH)
    assert served(west) == {"support": 1}


async def test_failing_canary_goes_to_zero_within_seconds_and_no_request_fails(
    workers: Any, routers: Any
) -> None:
    west, north = await workers("west", **worker_kw()), await workers("north", **worker_kw())
    router = await routers(versioned({"west": west.address, "north": north.address}, 20))
    run = await rollback_run(router, [west, north], rate=80.0, healthy_s=1.0, observe_s=2.0)
    print(f"rollback_s={run.rollback_s:.3f} veto_s={run.veto_s:.3f} ok={run.ok}")
    assert run.failed == [], "a failing canary must fail no client request"
    assert run.ok > 150
    assert run.rollback_s <= 10.0 and run.veto_s <= 10.0
    assert run.canary_calls_after_veto == 0
    assert "error rate" in run.reason
    # 0 % from then on: everything goes to the stable version.
    before = served(west, north)[CANARY]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        await asyncio.gather(*(stub.Chat(ask(), metadata=AUTH) for _ in range(50)))
    assert served(west, north)[CANARY] == before
    # What the operator reads in this replica's Lease: the verdict, with the figures.
    report = router.plane.canaries.report()
    assert report[("acme-ml", "chat", CANARY)].breach.startswith("error rate")
    assert report[("acme-ml", "chat", STABLE)].requests > 0


async def test_veto_ends_when_the_operator_rolls_back_and_a_new_canary_is_judged_afresh(
    workers: Any, routers: Any
) -> None:
    west = await workers("west", **worker_kw())
    source = StaticSource(versioned({"west": west.address}, 50, min_requests=5))
    router = await routers(source)
    west.failing[CANARY] = grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(20):
            await stub.Chat(ask(), metadata=AUTH)  # none fails
        assert router.plane.canaries.vetoed
        # The operator's rollback reaches the table: v2 RolledBack at 0 %, v1 100 %.
        source.update(versioned({"west": west.address}, 0, states=("RolledBack", "Stable")))
        assert not router.plane.canaries.vetoed
        calls = len(west.calls)
        for _ in range(10):
            await stub.Chat(ask(), metadata=AUTH)
        assert {c.request.model for c in west.calls[calls:]} == {STABLE}


async def test_slow_canary_is_vetoed_on_its_p99(workers: Any, routers: Any) -> None:
    west = await workers("west", **worker_kw())
    router = await routers(versioned({"west": west.address}, 50, min_requests=10),
                           canary_check_s=0.2)  # fmt: skip
    west.model_delay_s[CANARY] = 0.05
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(30):
            await stub.Chat(ask(), metadata=AUTH)
        deadline = time.monotonic() + 3
        while not router.plane.canaries.vetoed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    (why,) = router.plane.canaries.vetoed.values()
    assert "p99 latency" in why


async def test_streams_in_flight_survive_a_promotion_and_a_rollback(
    workers: Any, routers: Any
) -> None:
    west = await workers("west", token_delay_s=0.1, words=8, **worker_kw())
    source = StaticSource(versioned({"west": west.address}, 50))
    router = await routers(source)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]

        async def stream() -> tuple[str, int]:
            chunks = [c async for c in stub.ChatStream(ask(), metadata=AUTH)]
            return "".join(c.choices[0].delta.content for c in chunks), len(chunks)

        first = [asyncio.create_task(stream()) for _ in range(10)]
        await asyncio.sleep(0.25)  # streams on both versions, mid-answer
        # Promotion: v2 Stable 100 %, v1 Previous 0 %.
        source.update(versioned({"west": west.address}, 100, states=("Stable", "Previous")))
        second = [asyncio.create_task(stream()) for _ in range(4)]
        await asyncio.sleep(0.25)
        # Rollback, by hand: v1 Stable again, v2 Previous.
        source.update(versioned({"west": west.address}, 0, states=("Previous", "Stable")))
        results = await asyncio.gather(*first, *second)
    assert all(n == 8 for _, n in results)
    models = collections.Counter(c.request.model for c in west.calls)
    assert models[CANARY] >= 5 + 4 - 1 and models[STABLE] >= 4  # both versions were in flight
    assert not west.cancelled
    assert {V1, V2} == {STABLE.split("@")[1], CANARY.split("@")[1]}


async def test_openai_sdk_never_sees_a_failing_canary(workers: Any, routers: Any) -> None:
    """The HTTP front, unary and streamed, through the SDK tenants use: no error, no version."""
    import openai

    west = await workers("west", **worker_kw())
    router = await routers(versioned({"west": west.address}, 50, min_requests=1000))
    west.failing[CANARY] = grpc.StatusCode.INTERNAL  # never judged: every retry is needed
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key=ACME_KEY, max_retries=0
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    answers = [await client.chat.completions.create(model=MODEL, messages=messages)
               for _ in range(10)]  # fmt: skip
    assert {a.model for a in answers} == {MODEL}
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    chunks = [c async for c in stream]
    assert chunks and {c.model for c in chunks} == {MODEL}
    await client.close()
    seen = served(west)
    assert seen[CANARY] >= 5 and seen[STABLE] == len(answers) + 1  # each canary try retried
    assert not router.plane.canaries.vetoed  # under minRequests: the retries alone saved them


async def test_a_pool_that_serves_only_the_bare_name_still_answers(
    workers: Any, routers: Any
) -> None:
    """An operator upgrade: the status has versions while a pool still runs its old Serve
    config, where the adapter has its bare name; the router retries that name there."""
    old = await workers("west", adapters=("support",))
    router = await routers(versioned({"west": old.address}, 0, states=("Previous", "Stable")))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        answer = await stub.Chat(ask(), metadata=AUTH)
    assert answer.model == MODEL
    assert [c.request.model for c in old.calls] == [STABLE, "support"]
