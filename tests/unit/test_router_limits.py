"""The router's per-tenant limits as pure logic: the sliding window's promise, reserve and
settle, each limit's refusal and Retry-After, long budgets from the usage record."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tramontane_api.v1alpha1.tenant import Quotas
from tramontane_router.errors import RateLimited
from tramontane_router.limits.budgets import LongBudgets
from tramontane_router.limits.rates import UNLIMITED, RateLimiter
from tramontane_router.limits.tokens import count_prompt_tokens, worst_case
from tramontane_router.limits.window import SlidingWindow
from tramontane_router.table import Route, TenantView
from tramontane_router.usage import UsageLog
from tramontane_workers.contract import inference_pb2 as pb

ROUTE = Route("t", "m", "m", None, (), max_model_len=1000)


def _tenant(**quotas: Any) -> TenantView:
    return TenantView("t", frozenset({"ns"}), quotas=Quotas(**quotas))


def _request(max_tokens: int | None = 10, text: str = "hello") -> pb.ChatRequest:
    request = pb.ChatRequest(model="m", messages=[pb.Message(role="user", content=text)])
    if max_tokens is not None:
        request.max_tokens = max_tokens
    return request


def _usage(prompt: int, completion: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt, completion_tokens=completion,
                    total_tokens=prompt + completion)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.integers(1, 40)), min_size=1, max_size=80))
def test_any_60_second_window_stays_within_the_cap(arrivals: list[tuple[float, int]]) -> None:
    """Whatever arrives when, the admitted amounts of every 60 s window sum to <= the cap, and
    a refused request is told a wait after which it fits."""
    window, cap, now = SlidingWindow(), 100.0, 0.0
    admitted: list[tuple[float, int]] = []
    for gap, amount in arrivals:
        now += gap
        wait = window.retry_after(amount, cap, now)
        if wait == 0:
            window.add(amount, now)
            admitted.append((now, amount))
        elif wait is not None:  # (asked of a copy: asking evicts what is out of the window)
            assert copy.deepcopy(window).retry_after(amount, cap, now + wait) == 0
    for start, _ in admitted:
        assert sum(a for t, a in admitted if start <= t < start + 60) <= cap


def test_settling_frees_the_difference_at_once() -> None:
    window = SlidingWindow()
    entry = window.add(90, 0.0)
    assert window.retry_after(20, 100, 1.0) == pytest.approx(59.0)
    window.settle(entry, 30)
    assert window.retry_after(20, 100, 1.0) == 0
    assert window.used(61.0) == 0  # gone with the window
    window.settle(entry, 50)  # settling an entry already out of the window changes nothing
    assert window.used(61.0) == 0


async def test_unlimited_tenants_take_the_fast_path() -> None:
    assert await RateLimiter().admit(_tenant(), ROUTE, _request(), 0) is UNLIMITED


async def test_requests_per_minute_and_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    tenant = _tenant(requests_per_minute=2)
    for _ in range(2):
        (await limiter.admit(tenant, ROUTE, _request(), 0)).settle(_usage(1, 1))
        now[0] += 10
    with pytest.raises(RateLimited) as err:
        await limiter.admit(tenant, ROUTE, _request(), 0)
    assert "requestsPerMinute" in err.value.message and "limit is 2" in err.value.message
    assert err.value.retry_after_s == pytest.approx(40.0)  # the first request leaves at 60 s
    now[0] = 60.0
    await limiter.admit(tenant, ROUTE, _request(), 0)


async def test_tokens_reserved_at_worst_case_then_settled() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    tenant = _tenant(tokens_per_minute=250)
    request = _request(max_tokens=100)
    cost = worst_case(count_prompt_tokens(request), request, None)
    assert 100 < cost < 120
    first = await limiter.admit(tenant, ROUTE, request, 0)
    second = await limiter.admit(tenant, ROUTE, request, 0)
    with pytest.raises(RateLimited) as err:  # two worst cases in flight: no room for a third
        await limiter.admit(tenant, ROUTE, request, 0)
    assert "tokensPerMinute" in err.value.message
    first.settle(_usage(5, 3))  # it used 8 tokens: the rest is free again
    third = await limiter.admit(tenant, ROUTE, request, 0)
    second.settle(None)  # never reached a worker: nothing used
    third.settle(_usage(5, 100))
    third.settle(_usage(5, 100))  # settling twice counts once
    (demand,) = [d for d in limiter.demands() if d.limit == "tokens"]
    assert demand.used == 8 + 0 + 105 and demand.global_limit == 250
    # Demand: the refused request at its worst case, the others at what they really used.
    assert demand.wanted == cost + 8 + 0 + 105


async def test_without_max_tokens_the_context_is_reserved() -> None:
    limiter = RateLimiter()
    with pytest.raises(RateLimited) as err:
        await limiter.admit(_tenant(tokens_per_minute=500), ROUTE, _request(None), 0)
    assert "may use 1000 tokens" in err.value.message and err.value.retry_after_s is None


async def test_concurrency_and_refusal_takes_nothing() -> None:
    limiter = RateLimiter()
    tenant = _tenant(max_concurrent_requests=1, requests_per_minute=5)
    held = await limiter.admit(tenant, ROUTE, _request(), 0)
    for _ in range(3):
        with pytest.raises(RateLimited) as err:
            await limiter.admit(tenant, ROUTE, _request(), 0)
        assert "maxConcurrentRequests" in err.value.message
    held.settle(_usage(1, 1))
    await limiter.admit(tenant, ROUTE, _request(), 0)
    used = {d.limit: d.used for d in limiter.demands()}
    assert used == {"requests": 2, "concurrent": 1}  # refused requests took nothing


async def test_caps_from_the_exchange_bound_this_replica() -> None:
    limiter = RateLimiter()
    tenant = _tenant(requests_per_minute=10)
    limiter.set_caps({("t", "requests"): 1})
    await limiter.admit(tenant, ROUTE, _request(), 0)
    with pytest.raises(RateLimited) as err:
        await limiter.admit(tenant, ROUTE, _request(), 0)
    assert err.value.retry_after_s is not None


async def test_long_budgets_count_every_replica(tmp_path: Path) -> None:
    today = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    other = UsageLog(tmp_path, "r2", now=lambda: today)
    mine = UsageLog(tmp_path, "r1", now=lambda: today)
    budgets = LongBudgets(mine, now=lambda: today)
    limiter = RateLimiter(budgets=budgets)
    tenant = _tenant(tokens_per_day=300)
    other.record("t", "m", None, 100, 50)
    other.flush()
    budgets.refresh()
    assert budgets.used("t", "2026-11-27") == 150 and budgets.used("t", "2026-11") == 150
    permit = await limiter.admit(tenant, ROUTE, _request(max_tokens=100), 0)
    with pytest.raises(RateLimited) as err:
        await limiter.admit(tenant, ROUTE, _request(max_tokens=100), 0)
    assert "tokensPerDay" in err.value.message
    assert err.value.retry_after_s == pytest.approx(3600)  # until UTC midnight
    permit.settle(_usage(5, 5))
    budgets.refresh()  # idempotent: nothing new is counted twice
    assert budgets.used("t", "2026-11-27") == 150
