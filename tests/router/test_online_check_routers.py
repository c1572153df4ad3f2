"""Online checks through real routers and real gRPC workers: a canary that answers the probe
wrongly is vetoed within about `intervalSeconds` with the reason in the replica's verdict
while every client request succeeds; one that answers rightly keeps its weight; a failing
probe is a breach too; probes are system traffic (no tenant usage or limits, not in the
version's figures)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
from canary_harness import CANARY, MODEL, STABLE, versioned, worker_kw

from conftest import ACME_KEY
from tramontane_router.dataplane import NoLimits, Permit
from tramontane_router.sources import StaticSource
from tramontane_router.table import Route, TenantView
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc

AUTH = (("authorization", f"Bearer {ACME_KEY}"),)
KEY = ("acme-ml", "chat", CANARY)


def check(expect: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": "Answer in one word."},
                     {"role": "user", "content": "capital of France?"}],
        "expect": expect,
        "intervalSeconds": 1,
        "maxTokens": 8,
    }  # fmt: skip


def probes(*workers: Any) -> list[Any]:
    return [c for w in workers for c in w.calls if "x-tramontane-probe" in c.metadata]


class CountingLimits(NoLimits):
    """Admits everything, counting what the tenants' limits were asked for."""

    def __init__(self) -> None:
        self.admitted: list[str] = []

    async def admit(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, deadline: float
    ) -> Permit:
        self.admitted.append(request.messages[-1].content)
        return await super().admit(tenant, route, request, deadline)


async def _verdict(router: Any, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        breach = router.plane.canaries.report()[KEY].breach
        if breach:
            return str(breach)
        await asyncio.sleep(0.05)
    return ""


async def test_a_wrong_answer_vetoes_the_canary_with_the_reason_and_no_request_fails(
    workers: Any, routers: Any, tmp_path: Path
) -> None:
    west, north = await workers("west", **worker_kw()), await workers("north", **worker_kw())
    limits = CountingLimits()
    # The fake worker answers "<worker>|<model>|<question>": never "Paris".
    router = await routers(
        versioned({"west": west.address, "north": north.address}, 50, online_check=check("Paris")),
        limits=limits,
        usage_dir=str(tmp_path),
    )
    started = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        load = asyncio.gather(*(stub.Chat(pb.ChatRequest(
            model=MODEL, messages=[pb.Message(role="user", content=f"q{i}")]), metadata=AUTH)
            for i in range(40)))  # fmt: skip
        why = await _verdict(router, within_s=3.0)
        answers = await load
        assert len(answers) == 40 and all(a.model == MODEL for a in answers)
        assert why.startswith("online check: answer ") and why.endswith("does not match /Paris/")
        assert "capital of France?" in why  # the answer is quoted
        assert time.monotonic() - started < 3.0
        # Vetoed: 0 % on this replica from then on, and no further probes of it.
        seen = [c.request.model for w in (west, north) for c in w.calls]
        sent = len(probes(west, north))
        for i in range(20):
            await stub.Chat(pb.ChatRequest(model=MODEL, messages=[
                pb.Message(role="user", content=f"after{i}")]), metadata=AUTH)  # fmt: skip
        after = [c.request.model for w in (west, north) for c in w.calls][len(seen) :]
        assert set(after) == {STABLE}
        await asyncio.sleep(1.5)
        assert len(probes(west, north)) == sent
    # The probe went to the canary by its versioned name, greedy, as system traffic.
    probe = probes(west, north)[0]
    assert probe.request.model == CANARY and probe.metadata["multiplexed_model_id"] == CANARY
    assert probe.request.temperature == 0.0 and probe.request.max_tokens == 8
    assert [m.role for m in probe.request.messages] == ["system", "user"]
    assert "x-tramontane-tenant" not in probe.metadata
    # Not the tenant's: never through its limits, not in its usage, not in the figures.
    assert "capital of France?" not in limits.admitted and len(limits.admitted) == 60
    router.usage.flush()
    assert sum(row["requests"] for row in router.usage.tenant_usage("acme")) == 60
    report = router.plane.canaries.report()
    assert report[KEY].requests + report[("acme-ml", "chat", STABLE)].requests == 60


async def test_a_right_answer_keeps_the_canary_and_its_weight(workers: Any, routers: Any) -> None:
    west = await workers("west", **worker_kw())
    router = await routers(
        versioned({"west": west.address}, 50, online_check=check(r"support@\w+\|capital")),
    )
    await asyncio.sleep(2.5)  # two or three probes, each answered rightly
    assert len(probes(west)) >= 2
    assert not router.plane.canaries.vetoed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        for i in range(20):
            await stub.Chat(pb.ChatRequest(model=MODEL, messages=[
                pb.Message(role="user", content=f"q{i}")]), metadata=AUTH)  # fmt: skip
    clients = [c.request.model for c in west.calls if "x-tramontane-probe" not in c.metadata]
    assert clients.count(CANARY) == 10 and clients.count(STABLE) == 10
    assert router.plane.canaries.report()[KEY].breach == ""
    # Probes are not in the version's figures: only the 10 client requests are.
    assert router.plane.canaries.report()[KEY].requests == 10
    # Draining stops the loop: no probe after it.
    await router.drain()
    sent = len(probes(west))
    await asyncio.sleep(1.5)
    assert len(probes(west)) == sent


async def test_a_failing_probe_is_a_breach(workers: Any, routers: Any) -> None:
    west = await workers("west", **worker_kw())
    west.failing[CANARY] = grpc.StatusCode.INTERNAL
    router = await routers(versioned({"west": west.address}, 10, online_check=check("x")))
    why = await _verdict(router, within_s=2.0)
    assert why.startswith("online check: the probe failed (") and "INTERNAL" in why


async def test_an_unavailable_cluster_fails_the_probe_over_as_a_client_request(
    workers: Any, routers: Any
) -> None:
    west, north = await workers("west", **worker_kw()), await workers("north", **worker_kw())
    pools = {"west": west.address, "north": north.address}
    source = StaticSource(versioned(pools, 10))
    router = await routers(source)
    (deployment,) = router.source.table.by_namespace["acme-ml"]
    for endpoint in deployment.endpoints:  # west first: north looks busy
        router.balancer.report_stats(endpoint, 0 if endpoint.cluster == "west" else 1000, 0)
    west.fail_next(grpc.StatusCode.UNAVAILABLE)
    source.update(versioned(pools, 10, online_check=check(r"support@\w+\|capital")))
    await asyncio.sleep(0.5)
    assert [c.metadata["x-tramontane-probe"] for c in west.calls] == ["online-check"]
    assert len(probes(north)) == 1  # the retry, answered rightly
    assert not router.plane.canaries.vetoed
    # With nowhere left to fail over to, UNAVAILABLE is the probe's failure.
    west.fail_next(grpc.StatusCode.UNAVAILABLE)
    north.fail_next(grpc.StatusCode.UNAVAILABLE)
    why = await _verdict(router, within_s=2.0)
    assert why.startswith("online check: the probe failed (UNAVAILABLE: ")


async def test_a_probe_without_an_answer_in_time_is_a_breach(workers: Any, routers: Any) -> None:
    west = await workers("west", **worker_kw())
    west.model_delay_s[CANARY] = 2.0
    source = StaticSource(versioned({"west": west.address}, 10))
    router = await routers(source)
    router.probes.timeout_s = 0.3
    source.update(versioned({"west": west.address}, 10, online_check=check("west")))
    why = await _verdict(router, within_s=1.5)
    assert why == "online check: the probe failed (no answer within 0.3s)"
