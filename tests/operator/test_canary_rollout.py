"""Canary rollouts end to end (`canary_stack.py`): the real operator and a real router on the
emulated hub, a real gRPC worker behind them. The operator steps a healthy canary to 100 %
from the figures the router publishes in its Lease; a failing canary is cut to 0 % by the
router at once (no client request fails) and rolled back by the operator (status, Event); a
rolled-back version stays rolled back; the pin serves a kept version, and rolls back by hand."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from canary_stack import ROLLOUT, V1, V1_URI, V2, V2_URI, Load, Stack
from operator_harness import eventually


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    made = await Stack.start()
    try:
        yield made
        assert made.clusters.violations() == [], "writes a real API server would reject"
    finally:
        await made.close()


async def start_canary(stack: Stack) -> None:
    await stack.create(V1_URI)
    await eventually(lambda: stack.versions() == {V1: ("Stable", 100)})
    await eventually(stack.routable)
    await stack.set_adapter(uri=V2_URI)
    await eventually(lambda: stack.versions() == {V2: ("Canary", 20), V1: ("Stable", 80)})
    await eventually(lambda: stack.router_weights() == {f"support@{V2}": 20, f"support@{V1}": 80})


async def test_a_healthy_canary_is_stepped_to_100_by_the_operator(stack: Stack) -> None:
    await start_canary(stack)
    served_at_start = stack.served_adapters()
    assert served_at_start == sorted([f"support@{V1}", f"support@{V2}"])
    load = Load(stack.router)
    await eventually(lambda: stack.versions().get(V2) == ("Canary", 50), timeout_s=20)
    assert stack.served_adapters() == served_at_start  # weights never touch the pools
    await eventually(lambda: stack.versions() == {V2: ("Stable", 100), V1: ("Previous", 0)},
                     timeout_s=20)  # fmt: skip
    await eventually(lambda: stack.router_weights() == {f"support@{V2}": 100})
    before = collections.Counter(c.request.model for c in stack.worker.calls)
    await asyncio.sleep(1.0)
    await load.stop()
    assert load.failed == []
    after = collections.Counter(c.request.model for c in stack.worker.calls) - before
    assert set(after) == {f"support@{V2}"}  # promoted: all traffic on v2
    assert stack.events("CanaryStepped") and stack.events("AdapterPromoted")
    assert stack.served_adapters() == served_at_start


async def test_a_failing_canary_is_rolled_back_with_no_failed_request(stack: Stack) -> None:
    await start_canary(stack)
    load = Load(stack.router)
    await asyncio.sleep(1.0)
    stack.worker.failing[f"support@{V2}"] = grpc.StatusCode.INTERNAL
    injected = time.monotonic()
    await eventually(lambda: stack.versions().get(V2) == ("RolledBack", 0), timeout_s=15)
    operator_s = time.monotonic() - injected
    first = stack.worker.failed_at[0]
    last = stack.worker.failed_at[-1]
    await asyncio.sleep(1.0)
    await load.stop()
    print(f"router rollback_s={last - first:.3f} operator status after {operator_s:.2f}s")
    assert load.failed == [], "no client request may fail"
    assert last - first <= 10.0
    assert operator_s <= 10.0
    row = stack.row()
    assert row["lastRollback"]["version"] == V2
    assert "error rate" in row["lastRollback"]["reason"]
    (event,) = stack.events("AdapterRolledBack")
    assert event["type"] == "Warning" and V2 in event["message"]
    # Not rolled out again while the spec still names it.
    await asyncio.sleep(2.0)
    assert stack.versions()[V2] == ("RolledBack", 0)
    # The pin serves it anyway (the manual override), at once.
    stack.worker.failing.clear()
    await stack.set_adapter(uri=V2_URI, version=V2)
    await eventually(lambda: stack.versions() == {V2: ("Stable", 100), V1: ("Previous", 0)})
    # And the pin rolls back by hand: one field.
    await stack.set_adapter(uri=V2_URI, version=V1)
    await eventually(lambda: stack.versions() == {V1: ("Stable", 100), V2: ("Previous", 0)})


async def test_a_canary_failing_its_online_check_is_rolled_back_with_the_reason() -> None:
    check = {"messages": [{"role": "user", "content": "capital of France?"}],
             "expect": "Paris", "intervalSeconds": 1}  # fmt: skip
    rollout = {**ROLLOUT, "analysis": {**ROLLOUT["analysis"], "onlineCheck": check}}
    stack = await Stack.start(rollout)
    try:
        await stack.create(V1_URI)
        await eventually(lambda: stack.versions() == {V1: ("Stable", 100)})
        await eventually(stack.routable)
        await stack.set_adapter(uri=V2_URI)  # the worker answers "<name>|<model>|<question>"
        await eventually(lambda: stack.versions().get(V2) == ("RolledBack", 0), timeout_s=15)
        reason = stack.row()["lastRollback"]["reason"]
        assert "online check: answer " in reason and "does not match /Paris/" in reason
        await eventually(lambda: len(stack.events("AdapterRolledBack")) == 1)
        (event,) = stack.events("AdapterRolledBack")
        assert event["type"] == "Warning" and "online check" in event["message"]
        assert stack.clusters.violations() == [], "writes a real API server would reject"
    finally:
        await stack.close()
