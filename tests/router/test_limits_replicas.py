"""One global tokens-per-minute limit across three real router replicas (`Router` over its own
`HubSource`, one emulated hub), with gRPC load skewed 80/15/5 at twice the limit.

Short settings: a 4 s window (`limits_window_s`), 0.2 s exchange rounds, 1 s leases; acme's
limit is 600 tokens a window. A request ("hi", max_tokens 4) reserves 10 tokens and settles to
the fake worker's usage (8). Every admission is recorded at the limiter (its window entry: the
instant on the limiter's clock, then the settled tokens; `replicas_harness.py`), and the
assertions are on sums over those entries and on orderings, not on timings:

- in every window-length interval the tokens admitted by the three routers together stay
  within the limit (settled usage is below the reservation, so no estimate error to allow);
- the busy router gets most of the budget, every router with demand admits something;
- a drained router's share goes to the others, not before its lease and window are over;
- a router cut off from the hub falls back to admitting nothing, the others take its share
  only once its lease and window are over, and the sum stays within the limit throughout.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from replicas_harness import NAMES, NS, Platform, skewed

from operator_harness import eventually
from tramontane_kube import LEASE, ClusterConfig, KubeClient
from tramontane_router.limits.exchange import BudgetExchange, Peer, lease_name, parse_lease
from tramontane_router.limits.shares import ReplicaView
from tramontane_router.limits.types import Demand, LimitKey

LIMIT, WINDOW_S, INTERVAL_S, LEASE_S = 600, 4.0, 0.2, 1
KEY: LimitKey = ("acme", "tokens")
RATE = 30.0  # requests a second over the three routers: 300 tokens/s reserved, 2x the limit


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    made = await Platform.start(limit=LIMIT, window_s=WINDOW_S, interval_s=INTERVAL_S,
                                lease_s=LEASE_S)  # fmt: skip
    try:
        yield made
        assert made.clusters.violations() == [], "writes a real API server would reject"
    finally:
        await made.close()


def within_limit(p: Platform) -> None:
    worst = p.ledger.worst_window(WINDOW_S)
    assert worst <= LIMIT, f"{worst} tokens admitted in one window, the limit is {LIMIT}"


async def converged(p: Platform) -> dict[str, float]:
    """Every router holds a cap, together most of the limit."""

    def ready() -> dict[str, float] | None:
        caps = p.caps()
        return caps if min(caps.values()) > 0 and sum(caps.values()) >= 0.8 * LIMIT else None

    caps: dict[str, float] = await eventually(ready, timeout_s=20)
    return caps


async def lease_renewed(p: Platform, name: str) -> float:
    """When `name` last renewed its Lease (epoch seconds), as the hub holds it."""
    lease = await p.api.get(LEASE, NS, lease_name(name))
    stamp = str(lease["spec"]["renewTime"])
    return datetime.datetime.fromisoformat(stamp).timestamp()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_skewed_load_stays_within_the_limit_and_a_drained_router_frees_its_share(
    platform: Platform,
) -> None:
    p = platform
    loads = skewed(p, RATE)
    try:
        await converged(p)
        start = time.monotonic()
        await asyncio.sleep(3 * WINDOW_S)
        end = time.monotonic()
        within_limit(p)
        got = {n: p.ledger.admitted(start, end, n) for n in NAMES}
        # Demand a 960, b 180, c 60 a window over a limit of 600: water-filling gives
        # c and b their demand and a the rest. The busy router gets most; nobody starves.
        assert got["a"] > got["b"] > got["c"] > 0, got
        assert got["a"] > 0.5 * sum(got.values()), got
        assert all(loads[n].ok > 0 and loads[n].refused > 0 for n in ("a",)), loads["a"]
        assert loads["c"].ok > 0

        # b is drained (its clients stop: a drained router refuses with UNAVAILABLE). Until
        # it stops, its exchange still runs and gives back what it no longer wants; what it
        # last published stays counted by the others until its lease and window are over.
        await loads["b"].stop()
        await p.drain("b")
        lease = parse_lease(await p.api.get(LEASE, NS, lease_name("b")))
        assert lease is not None
        b_cap = lease.budget[KEY].cap
        dead_at = lease.renewed + LEASE_S + WINDOW_S
        early: list[dict[str, float]] = []

        async def watch() -> None:
            while time.time() < dead_at - INTERVAL_S:
                if p.cap("a") + p.cap("c") > LIMIT - b_cap + 1e-6:
                    early.append(p.caps())
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        # a wants far more than it holds: it grows into b's share, once b's lease and window
        # are over (the exchange's rule), not before.
        await eventually(lambda: p.cap("a") + p.cap("c") > LIMIT - b_cap + 1,
                         timeout_s=LEASE_S + WINDOW_S + 10)  # fmt: skip
        assert time.time() >= dead_at - INTERVAL_S, "b's share was taken before it was dead"
        await watcher
        assert early == [], early[:3]
        await eventually(lambda: p.cap("a") > 0.8 * (LIMIT - p.cap("c")), timeout_s=10)
        after = time.monotonic()
        await asyncio.sleep(WINDOW_S)
        within_limit(p)
        late = {n: p.ledger.admitted(after, time.monotonic(), n) for n in ("a", "c")}
        assert late["a"] > got["a"] / 3 * 1.2, (late, got)  # a admits more than before
        assert late["c"] > 0
    finally:
        for load in loads.values():
            await load.stop()
    within_limit(p)


async def test_a_router_partitioned_from_the_hub_keeps_the_sum_within_the_limit(
    platform: Platform,
) -> None:
    p = platform
    loads = skewed(p, RATE)
    b = p.routers["b"]
    assert b.exchange is not None
    healthy = b.exchange.client
    try:
        await converged(p)
        await asyncio.sleep(WINDOW_S)
        b_cap = p.cap("b")
        assert b_cap > 0
        b.exchange.client = KubeClient(
            "cut", ClusterConfig(server=f"http://127.0.0.1:{closed_port()}"),
            attempts=1, timeout_s=0.2,
        )  # fmt: skip
        cut_at = time.monotonic()
        # Within its lease b keeps its cap; then it falls back to 0 and admits nothing new.
        await eventually(lambda: p.cap("b") == 0, timeout_s=LEASE_S + 3)
        zero_at = time.monotonic()
        assert zero_at - cut_at >= LEASE_S - 2 * INTERVAL_S
        # The others grow into b's share once its lease and window are over.
        await eventually(lambda: p.cap("a") + p.cap("c") > LIMIT - b_cap + 1,
                         timeout_s=LEASE_S + WINDOW_S + 10)  # fmt: skip
        assert time.monotonic() >= cut_at + WINDOW_S, "b's share was taken too early"
        grown_at = time.monotonic()
        await asyncio.sleep(WINDOW_S)
        assert p.ledger.admitted(zero_at + 0.05, time.monotonic(), "b") == 0
        assert loads["b"].refused > 0
        within_limit(p)
        assert p.ledger.admitted(grown_at, time.monotonic(), "a") > 0
    finally:
        cut, b.exchange.client = b.exchange.client, healthy
        await cut.close()
    try:
        # Back on the hub, b rejoins from 0 and admits again; still within the limit.
        await eventually(lambda: p.cap("b") > 0, timeout_s=10)
        back = time.monotonic()
        await asyncio.sleep(WINDOW_S)
        assert p.ledger.admitted(back, time.monotonic(), "b") > 0
    finally:
        for load in loads.values():
            await load.stop()
    within_limit(p)


# ------------------------------------------------------------- the exchange, one round
class _OneLimiter:
    """A limiter whose window holds `used` tokens of acme's limit, wanting `wanted` a round."""

    def __init__(self, used: float, wanted: float) -> None:
        self.used, self.wanted = used, wanted
        self.caps: dict[Any, float] = {}

    def demands(self) -> list[Demand]:
        return [Demand("acme", "tokens", LIMIT, self.used, self.wanted)]

    def set_caps(self, caps: Mapping[Any, float]) -> None:
        self.caps.update(caps)


class _Hub:
    """A hub that accepts every Lease write."""

    async def apply(self, kind: Any, desired: dict[str, Any], current: Any) -> tuple[Any, bool]:
        self.written = desired
        return desired, True


async def test_a_shrinking_replica_stops_admitting_until_its_window_is_down_to_its_target() -> None:
    """A busy replica holding 500 of 600 while another now wants 300: its target is 300. It
    keeps publishing what its window still holds (500: those tokens count until they age
    out), but it must enforce 300, else it re-admits whatever ages out of its window and its
    cap never comes down: the other replica starves for as long as the load lasts."""
    limiter = _OneLimiter(used=500, wanted=600 * INTERVAL_S / WINDOW_S)
    exchange = BudgetExchange(_Hub(), NS, "a", limiter, interval_s=INTERVAL_S,  # type: ignore[arg-type]
                              lease_duration_s=LEASE_S, window_s=WINDOW_S)  # fmt: skip
    exchange.last_ok = time.monotonic()
    exchange.published = {KEY: ReplicaView(500, 600, 500)}
    other = Peer("b", time.time(), LEASE_S, {KEY: ReplicaView(100, 300, 100)})
    assert await exchange.publish({"b": other})
    assert exchange.published[KEY].cap == 500  # what it holds, for the others' sums
    assert limiter.caps[KEY] == pytest.approx(300)  # what it admits against


async def test_a_replica_with_sparse_demand_keeps_wanting_between_its_requests() -> None:
    """c asks for one request (10 tokens) every fifth round: 40 tokens a window. Its demand
    must read as that, steadily, not as 200 in the round with the request and 0 in the four
    without: at 0 its target is 0, its cap drops to 0, and what it regrows into (a share of
    what is free) is under one request's cost, so it admits nothing while the others are
    busy (measured: 0 admitted over 12 s by the 5 % router before this was fixed)."""
    limiter = _OneLimiter(used=0, wanted=0)
    exchange = BudgetExchange(_Hub(), NS, "c", limiter, interval_s=INTERVAL_S,  # type: ignore[arg-type]
                              lease_duration_s=LEASE_S, window_s=WINDOW_S)  # fmt: skip
    exchange.last_ok = time.monotonic()
    busy = Peer("a", time.time(), LEASE_S, {KEY: ReplicaView(560, 1000, 560)})
    wants = []
    for round_ in range(3 * int(WINDOW_S / INTERVAL_S)):
        limiter.wanted = 10 if round_ % 5 == 0 else 0
        assert await exchange.publish({"a": busy})
        wants.append(exchange.published[KEY].wanted)
    steady = wants[int(WINDOW_S / INTERVAL_S) :]
    assert min(steady) > 0, wants
    assert max(steady) <= 2 * 40, wants
