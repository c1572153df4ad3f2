"""A canary at the router: acme's adapter `support` in two versions (v1 stable, v2 the canary)
with the weights and analysis the operator would publish, served by real `FakeWorker`s behind
real routers; used by `test_canary.py` and `bench/canary_rollback.py`.

`rollback_run` drives a steady open-loop gRPC load at one router, makes the canary version
fail every request on every worker (`FakeWorker.failing`), and measures the time from the
first failure a worker served on the canary to the router's last attempt on it
(`rollback_s`: from then on it gets 0 % of the traffic), and counts failed client requests.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "operator"):
    if str(extra) not in sys.path:
        sys.path.append(str(extra))

from fake_worker import FakeWorker  # noqa: E402

from conftest import ACME_KEY, cluster, secret, tenant  # noqa: E402
from tramontane_router.server import Router  # noqa: E402
from tramontane_workers.contract import inference_pb2 as pb  # noqa: E402
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc  # noqa: E402

V1, V2 = "0000aaaa", "0000bbbb"
STABLE, CANARY = f"support@{V1}", f"support@{V2}"
MODEL = "tiny:support"


def versioned(
    pools: dict[str, str],
    canary_weight: int,
    *,
    min_requests: int = 10,
    max_error_rate: float = 0.05,
    max_p99_latency_ratio: float = 2.0,
    states: tuple[str, str] = ("Canary", "Stable"),
    online_check: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The platform objects: acme's `chat` with `support` at v2 (`states[0]`, at
    `canary_weight` %) and v1 (`states[1]`, the rest), as the operator publishes them."""
    versions = [
        {"version": V2, "uri": "file:///adapters/v2", "servedAs": CANARY,
         "weight": canary_weight, "state": states[0]},
        {"version": V1, "uri": "file:///adapters/v1", "servedAs": STABLE,
         "weight": 100 - canary_weight, "state": states[1]},
    ]  # fmt: skip
    analysis = {"minRequests": min_requests, "maxErrorRate": max_error_rate,
                "maxP99LatencyRatio": max_p99_latency_ratio}  # fmt: skip
    if online_check is not None:
        analysis["onlineCheck"] = online_check
    md = {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "acme-ml"},
        "spec": {
            "model": {"name": "tiny", "source": "file:///models/tiny"},
            "runtime": {"engine": "transformers"},
            "adapters": [
                {
                    "name": "support",
                    "uri": "file:///adapters/v2",
                    "rollout": {"steps": [{"weight": 10}, {"weight": 50}], "analysis": analysis},
                }
            ],
        },
        "status": {
            "phase": "Ready",
            "adapters": ["support"],
            "adapterVersions": [{"name": "support", "versions": versions}],
            "clusters": [
                {"name": c, "endpoint": a, "readyReplicas": 1, "desiredReplicas": 1}
                for c, a in pools.items()
            ],
        },
    }
    return [
        secret("acme-key", ACME_KEY),
        tenant("acme", ["acme-ml"], ["acme-key"]),
        cluster("west", "westeurope"),
        cluster("north", "northeurope"),
        md,
    ]


def worker_kw() -> dict[str, Any]:
    return {"adapters": (STABLE, CANARY)}


@dataclass
class Load:
    """Open-loop unary load at `rate` requests a second on one router."""

    router: Router
    rate: float
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _calls: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def _one(self, stub: Any) -> None:
        request = pb.ChatRequest(model=MODEL, messages=[pb.Message(role="user", content="hi")])
        try:
            await stub.Chat(request, metadata=(("authorization", f"Bearer {ACME_KEY}"),),
                            timeout=10)  # fmt: skip
            self.ok += 1
        except grpc.aio.AioRpcError as err:
            self.failed.append(f"{err.code().name}: {err.details()}")

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.router.grpc_port}") as channel:
            stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
            period, next_at = 1.0 / self.rate, time.monotonic()
            try:
                while True:
                    call = asyncio.create_task(self._one(stub))
                    self._calls.add(call)
                    call.add_done_callback(self._calls.discard)
                    next_at += period
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                await asyncio.gather(*self._calls, return_exceptions=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def canary_calls(workers: list[FakeWorker]) -> list[float]:
    """When the workers failed a request on the canary (monotonic seconds)."""
    return [t for w in workers for t in w.failed_at]


@dataclass
class RollbackRun:
    rollback_s: float  # first failure on the canary -> the router's last attempt on it
    veto_s: float  # first failure on the canary -> the router's veto
    ok: int
    failed: list[str]
    canary_calls_after_veto: int
    reason: str


async def rollback_run(
    router: Router,
    workers: list[FakeWorker],
    *,
    rate: float = 100.0,
    healthy_s: float = 1.0,
    observe_s: float = 3.0,
) -> RollbackRun:
    """Load -> healthy canary for `healthy_s` -> canary fails everywhere -> `observe_s` more."""
    load = Load(router, rate).start()
    await asyncio.sleep(healthy_s)
    for w in workers:
        w.failing[CANARY] = grpc.StatusCode.INTERNAL
    canaries = router.plane.canaries
    end = time.monotonic() + 30.0
    while not canaries.vetoed and time.monotonic() < end:
        await asyncio.sleep(0.01)
    vetoed = time.monotonic()
    await asyncio.sleep(observe_s)
    await load.stop()
    failures = sorted(canary_calls(workers))
    if not failures:
        calls = collections.Counter(c.request.model for w in workers for c in w.calls)
        raise RuntimeError(
            f"the canary never failed: no traffic reached it (client ok {load.ok}, failed "
            f"{len(load.failed)} {load.failed[:2]}; worker calls {dict(calls)})"
        )
    key = next(iter(canaries.vetoed_at), None)
    veto_at = canaries.vetoed_at[key] if key is not None else vetoed
    return RollbackRun(
        rollback_s=failures[-1] - failures[0],
        veto_s=veto_at - failures[0],
        ok=load.ok,
        failed=load.failed,
        canary_calls_after_veto=sum(1 for t in failures if t > veto_at),
        reason=next(iter(canaries.vetoed.values()), ""),
    )
