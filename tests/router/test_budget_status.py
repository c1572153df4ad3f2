"""Long budgets in a Tenant's status: the router writes `status.tokenBudget` (tokens today and
this month, what is left) through the status subresource of the emulated hub, and the
operator's own status computation carries it over (tests/unit/test_quotas.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc

sys.path.append(str(Path(__file__).parents[1] / "operator"))

from test_hub_source import acme_platform

from conftest import ACME_KEY, tenant
from operator_harness import eventually
from tramontane_kube import TENANT, KubeClient
from tramontane_workers.contract import inference_pb2 as pb
from tramontane_workers.contract import inference_pb2_grpc as pb_grpc


async def test_router_writes_the_token_budget_into_the_tenant_status(
    api: KubeClient, sources: Any, workers: Any, routers: Any, tmp_path: Path
) -> None:
    worker = await workers("west")
    await acme_platform(api, worker)
    await api.patch(TENANT, None, "acme", {"spec": tenant("acme", ["acme-ml"], ["acme-key"],
                                                          tokensPerDay=10_000)["spec"]})  # fmt: skip
    source = await sources()
    router = await routers(source, usage_dir=str(tmp_path), budget_status_interval_s=0.2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        total = 0
        for _ in range(3):
            reply = await stub.Chat(
                pb.ChatRequest(model="tiny", max_tokens=4,
                               messages=[pb.Message(role="user", content="hello")]),
                metadata=(("authorization", f"Bearer {ACME_KEY}"),),
            )  # fmt: skip
            total += reply.usage.total_tokens

    async def budget() -> dict[str, Any] | None:
        obj = await api.get(TENANT, None, "acme")
        found = ((obj or {}).get("status") or {}).get("tokenBudget")
        return found if found and found.get("tokensToday") == total else None

    written = await eventually(budget, timeout_s=10)
    assert written["remainingToday"] == 10_000 - total
    assert written["tokensThisMonth"] == total and "remainingThisMonth" not in written
    assert written["updatedTime"]
