"""The gRPC front and the routing behind it: auth, isolation, failover, outlier ejection,
deadlines and cancellation, table churn under load, health and graceful drain.

Every backend is a small real gRPC server (`FakeWorker`); every router is a real grpc.aio +
uvicorn server on loopback.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import ACME_KEY, GLOBEX_KEY, cluster, deployment, platform, secret, tenant
from tramontane_router.balancer import BalancerSettings
from tramontane_router.sources import StaticSource
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc


def request(model: str = "tiny", text: str = "hello", **kw: Any) -> pb.ChatRequest:
    return pb.ChatRequest(model=model, messages=[pb.Message(role="user", content=text)], **kw)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


class Client:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.InferenceStub(self.channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.channel.close()


async def until(check: Any, timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_chat_stream_and_models_over_grpc(workers: Any, routers: Any, spans: Any) -> None:
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    west.adapters = north.adapters = ("support",)
    router = await routers(platform(west, north, gx))
    client = Client(router.grpc_port)
    answer = await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert answer.choices[0].message.content.split("|")[0] in {"west", "north"}
    assert answer.model == "tiny" and answer.usage.completion_tokens == 4

    chunks = [c async for c in client.stub.ChatStream(request("tiny:support"), metadata=auth(ACME_KEY))]
    text = "".join(c.choices[0].delta.content for c in chunks)
    assert text.split("|")[1:] == ["support", "hello w1 w2 w3"]
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens > 0
    assert all(c.model == "tiny:support" for c in chunks)
    call = next(c for c in west.calls + north.calls if c.method == "ChatStream")
    assert call.metadata["multiplexed_model_id"] == "support"
    assert call.metadata["application"] == "acme-ml.chat"
    assert call.metadata["x-tramontane-tenant"] == "acme"
    # The span of the request carries the GenAI attributes, and its context reached the worker.
    span = next(s for s in spans.get_finished_spans() if s.name == "chat tiny:support")
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["tramontane.tenant"] == "acme"
    assert attrs["gen_ai.usage.output_tokens"] == 4 and attrs["tramontane.cluster"] in {"west", "north"}
    assert f"{span.context.trace_id:032x}" in call.metadata["traceparent"]
    assert ACME_KEY not in str(attrs)

    models = await client.stub.ListModels(pb.ListModelsRequest(), metadata=auth(ACME_KEY))
    assert [(m.id, m.kind) for m in models.data] == [("tiny", "base"), ("tiny:support", "adapter")]
    theirs = await client.stub.ListModels(pb.ListModelsRequest(), metadata=auth(GLOBEX_KEY))
    assert [m.id for m in theirs.data] == ["tiny"]
    await client.close()


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer nope-nope-nope-nope-nope"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Basic {ACME_KEY}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", ACME_KEY),), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_keys_are_required(
    workers: Any, routers: Any, metadata: Any, code: grpc.StatusCode
) -> None:
    west = await workers("west")
    router = await routers(platform(west, west, west))
    client = Client(router.grpc_port)
    for call in (
        client.stub.Chat(request(), metadata=metadata),
        client.stub.ListModels(pb.ListModelsRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code
        assert ACME_KEY not in (err.value.details() or "")
    assert west.calls == []
    await client.close()


async def test_tenant_isolation(workers: Any, routers: Any) -> None:
    """Another tenant's model, adapter and guessed names are NOT_FOUND, with a message that
    does not reveal they exist; a shared namespace belongs to nobody."""
    west, gx = await workers("west", adapters=("support",)), await workers("gx")
    objects = [
        *platform(west, west, gx),
        secret("initech-key", "initech-key-0123456789abcdef"),
        tenant("initech", ["acme-ml"], ["initech-key"]),  # claims acme's namespace too
    ]
    router = await routers(objects)
    client = Client(router.grpc_port)
    for key, model in [
        (GLOBEX_KEY, "tiny:support"),
        (GLOBEX_KEY, "support"),
        (GLOBEX_KEY, "acme-ml/chat"),
        (GLOBEX_KEY, "tiny:"),
        (GLOBEX_KEY, ":support"),
        (GLOBEX_KEY, "TINY"),
        (ACME_KEY, "tiny"),  # acme-ml is contested now: acme has no model left
        ("initech-key-0123456789abcdef", "tiny"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.Chat(request(model), metadata=auth(key))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, (key, model)
        # One message for absent and for someone else's: nothing tells them apart.
        assert err.value.details() == (
            f"model: {model!r} is not a model you can use (GET /v1/models lists yours)"
        )
    assert west.calls == []
    # globex still reaches its own `tiny`, on its own worker only.
    answer = await client.stub.Chat(request(), metadata=auth(GLOBEX_KEY))
    assert answer.choices[0].message.content.startswith("gx|")
    await client.close()


async def test_rotated_and_shared_keys(workers: Any, routers: Any) -> None:
    west = await workers("west")
    source = StaticSource(platform(west, west, west))
    router = await routers(source)
    client = Client(router.grpc_port)
    await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    rotated = "acme-key-rotated-0123456789"
    objects = platform(west, west, west)
    objects[0] = secret("acme-key", rotated)
    source.update(objects)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await client.stub.Chat(request(), metadata=auth(rotated))
    # The same key in two tenants' Secrets authenticates neither.
    objects[1] = secret("globex-key", rotated)
    source.update(objects)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request(), metadata=auth(rotated))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await client.close()


async def test_failover_once_to_another_cluster(workers: Any, routers: Any) -> None:
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    router = await routers(platform(west, north, gx))
    client = Client(router.grpc_port)
    west.fail_next(grpc.StatusCode.UNAVAILABLE, times=100)
    north.fail_next(grpc.StatusCode.UNAVAILABLE, times=1)
    # First request: whichever it tries first fails, the other... north fails once as well,
    # so the request that meets both failures is UNAVAILABLE, and no third attempt is made.
    outcomes = []
    for _ in range(6):
        try:
            answer = await client.stub.Chat(request(), metadata=auth(ACME_KEY))
            outcomes.append(answer.choices[0].message.content.split("|")[0])
        except grpc.aio.AioRpcError as err:
            outcomes.append(err.code().name)
    assert outcomes.count("UNAVAILABLE") <= 1
    assert set(outcomes) - {"UNAVAILABLE"} == {"north"}
    # Never more than two attempts per request.
    assert len(west.calls) + len(north.calls) <= 2 * len(outcomes)

    # A worker that is down (connection refused) is failed over too.
    await west.stop()
    for _ in range(4):
        answer = await client.stub.Chat(request(), metadata=auth(ACME_KEY))
        assert answer.choices[0].message.content.startswith("north|")
    await client.close()


async def test_not_retried_when_the_request_is_at_fault(workers: Any, routers: Any) -> None:
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    router = await routers(platform(west, north, gx))
    client = Client(router.grpc_port)
    west.fail_next(grpc.StatusCode.INVALID_ARGUMENT, times=5)
    north.fail_next(grpc.StatusCode.INVALID_ARGUMENT, times=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(west.calls) + len(north.calls) == 1
    await client.close()


async def test_stream_that_sent_tokens_is_never_retried(workers: Any, routers: Any) -> None:
    west, gx = await workers("west", token_delay_s=0.3), await workers("gx")
    north = await workers("north")
    router = await routers(platform(west, north, gx), balancer=BalancerSettings(region="westeurope"))
    client = Client(router.grpc_port)
    call = client.stub.ChatStream(request(), metadata=auth(ACME_KEY))
    first = await call.read()
    assert first.choices[0].delta.content.startswith("west|")
    await west.stop(grace=0)  # the worker dies mid-stream
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while await call.read() != grpc.aio.EOF:
            pass
    assert err.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}  # fmt: skip
    assert north.calls == []
    await client.close()


async def test_outlier_is_ejected_then_readmitted(workers: Any, routers: Any) -> None:
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    settings = BalancerSettings(eject_after=2, eject_base_s=0.6)
    router = await routers(platform(west, north, gx), balancer=settings)
    client = Client(router.grpc_port)
    west.fail_next(grpc.StatusCode.UNAVAILABLE, times=2)
    for _ in range(50):  # failures fail over, and west is ejected after its second one
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
        if not west.failures:
            break
    await until(lambda: not router.balancer.healthy(_endpoint(router, "west")))
    before = len(west.calls)
    for _ in range(10):
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert len(west.calls) == before  # ejected: no traffic
    await asyncio.sleep(0.7)
    for _ in range(20):
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert len(west.calls) > before  # back after the ejection period
    await client.close()


def _endpoint(router: Any, cluster_name: str) -> Any:
    return next(
        e
        for ds in router.source.table.by_namespace.values()
        for d in ds
        for e in d.endpoints
        if e.cluster == cluster_name
    )


async def test_deadline_reaches_the_worker(workers: Any, routers: Any) -> None:
    west, north, gx = await workers("west", delay_s=2), await workers("north", delay_s=2), await workers("gx")
    router = await routers(platform(west, north, gx))
    client = Client(router.grpc_port)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request(), metadata=auth(ACME_KEY), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    seen = (west.calls + north.calls)[0].deadline_s
    assert seen is not None and 0 < seen <= 0.55
    await until(lambda: len(west.cancelled) + len(north.cancelled) >= 1)
    await client.close()


@pytest.mark.parametrize("streamed", [False, True])
async def test_cancel_reaches_the_worker(workers: Any, routers: Any, streamed: bool) -> None:
    west = await workers("west", delay_s=0 if streamed else 5, token_delay_s=1 if streamed else 0)
    router = await routers(platform(west, west, west))
    client = Client(router.grpc_port)
    if streamed:
        call = client.stub.ChatStream(request(), metadata=auth(ACME_KEY))
        await call.read()
        call.cancel()
    else:
        call = client.stub.Chat(request(), metadata=auth(ACME_KEY))
        await until(lambda: len(west.calls) == 1)
        call.cancel()
    await until(lambda: len(west.cancelled) == 1, timeout=2)
    await until(lambda: all(s.outstanding == 0 for s in router.balancer.states.values()))
    await client.close()


async def test_table_churn_under_load_fails_nothing(workers: Any, routers: Any) -> None:
    """The table is replaced 50 times while 200 requests run: none fails."""
    west, north, gx = await workers("west", delay_s=0.02), await workers("north", delay_s=0.02), await workers("gx")
    objects = platform(west, north, gx)
    source = StaticSource(objects)
    router = await routers(source)
    client = Client(router.grpc_port)
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            pools = {"west": west.address} if i % 2 else {"west": west.address, "north": north.address}
            changed = [o for o in objects if not (o["kind"] == "ModelDeployment" and o["metadata"]["namespace"] == "acme-ml")]
            changed.append(deployment("chat", "acme-ml", pools, adapters=["support"], ready=1 + i % 3))
            source.update(changed)
            await asyncio.sleep(0.01)

    async def one(i: int) -> str:
        if i % 2:
            return (await client.stub.Chat(request(), metadata=auth(ACME_KEY))).choices[0].message.content
        chunks = [c async for c in client.stub.ChatStream(request(), metadata=auth(ACME_KEY))]
        return "".join(c.choices[0].delta.content for c in chunks)

    churner = asyncio.create_task(churn())
    results = await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)
    stop.set()
    await churner
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert {r.split("|")[0] for r in results if isinstance(r, str)} <= {"west", "north"}
    await client.close()


async def test_prefers_own_region_then_spills(workers: Any, routers: Any) -> None:
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    settings = BalancerSettings(region="northeurope", cloud="azure", room_per_replica=2)
    router = await routers(platform(west, north, gx), balancer=settings)
    client = Client(router.grpc_port)
    for _ in range(10):
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert len(north.calls) == 10 and west.calls == []
    # Load north past its room: the excess spills to west.
    north.delay_s = west.delay_s = 0.5
    await asyncio.gather(*(client.stub.Chat(request(), metadata=auth(ACME_KEY)) for _ in range(6)))
    assert len(north.calls) >= 12 and len(west.calls) >= 2
    await client.close()


async def test_workers_stats_steer_load(workers: Any, routers: Any) -> None:
    """A cluster whose workers report a long queue (other routers' load) gets less traffic."""
    west, north, gx = await workers("west"), await workers("north"), await workers("gx")
    west.waiting = 50
    router = await routers(platform(west, north, gx), stats_interval_s=0.1)
    client = Client(router.grpc_port)
    await until(lambda: router.balancer.load(_endpoint(router, "west")) >= 50)
    for _ in range(20):
        await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    assert len(north.calls) == 20
    await client.close()


async def test_health_reflection_and_graceful_drain(workers: Any, routers: Any) -> None:
    west = await workers("west", token_delay_s=0.2)
    router = await routers(platform(west, west, west), drain_grace_s=5.0)
    client = Client(router.grpc_port)
    health = health_pb2_grpc.HealthStub(client.channel)
    ok = await health.Check(health_pb2.HealthCheckRequest(service="tramontane.v1.Inference"))
    assert ok.status == health_pb2.HealthCheckResponse.SERVING

    reflect = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    replies = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "tramontane.v1.Inference" in names and "grpc.health.v1.Health" in names

    in_flight = client.stub.ChatStream(request(), metadata=auth(ACME_KEY))
    await in_flight.read()
    watcher = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watcher.read()).status == health_pb2.HealthCheckResponse.SERVING
    drain = asyncio.create_task(router.drain())
    assert (await watcher.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    # The stream in flight finishes in full within the grace period.
    rest = []
    while (chunk := await in_flight.read()) != grpc.aio.EOF:
        rest.append(chunk)
    assert rest[-1].choices[0].finish_reason == "stop"
    await asyncio.wait_for(drain, 6)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request(), metadata=auth(ACME_KEY), timeout=1)
    assert err.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    await client.close()


async def test_not_ready_model_is_unavailable_and_unknown_is_not_found(
    workers: Any, routers: Any
) -> None:
    west = await workers("west")
    objects = [*platform(west, west, west), deployment("later", "acme-ml", {"west": west.address}, model="later", ready=0), cluster("gone", "westus")]
    router = await routers(objects)
    client = Client(router.grpc_port)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request("later"), metadata=auth(ACME_KEY))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("retry-after", "5") in tuple(err.value.trailing_metadata() or ())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(request("nope"), metadata=auth(ACME_KEY))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "GET /v1/models" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Chat(pb.ChatRequest(model="tiny"), metadata=auth(ACME_KEY))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages" in (err.value.details() or "")
    await client.close()


async def test_usage_is_recorded_durably(workers: Any, routers: Any, tmp_path: Any) -> None:
    """Unary, streamed and cancelled streams all count; the record is on disk after drain."""
    from tramontane_router.usage import read_usage

    west = await workers("west", adapters=("support",), token_delay_s=0.05)
    router = await routers(platform(west, west, west), usage_dir=str(tmp_path))
    client = Client(router.grpc_port)
    await client.stub.Chat(request(), metadata=auth(ACME_KEY))
    [c async for c in client.stub.ChatStream(request("tiny:support"), metadata=auth(ACME_KEY))]
    call = client.stub.ChatStream(request(), metadata=auth(ACME_KEY))
    await call.read()
    call.cancel()
    await until(lambda: len(west.cancelled) == 1)
    await client.close()
    await router.drain()
    totals = read_usage(tmp_path.glob("usage-*.jsonl"))
    base, adapter = totals[("acme", "tiny", None)], totals[("acme", "tiny", "support")]
    assert base["requests"] == 2 and adapter["requests"] == 1
    assert base["completionTokens"] == 4 + 1  # the cancelled stream's one chunk counts
    assert adapter["completionTokens"] == 4 and adapter["promptTokens"] > 0
