"""`BudgetExchange`: three router replicas share one tokens-per-minute limit through Leases on an
emulated hub (the operator tier's `ValidatingEmulator`).

Each replica's limiter is a test double (`FakeLimiter`: the limiter is another unit): once per
round it is asked for its replica's share of a skewed load (80/15/5 of twice the limit),
admits what fits under its cap in its own sliding window, and records every admission in one
ledger shared by the three. Short settings: 0.1 s rounds, 1 s leases, a 2 s window.

A watcher checks, every 10 ms, that the caps the limiters enforce and the caps the Leases
publish never sum above the limit, and that what all replicas admitted in any window does not.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.append(str(Path(__file__).parents[1] / "operator"))

from operator_harness import Cluster, eventually
from tramontane_kube import LEASE, ClusterConfig, KubeClient
from tramontane_router.hub import USER_AGENT
from tramontane_router.limits.exchange import (
    BUDGET_ANNOTATION,
    LEASE_LABELS,
    BudgetExchange,
    decode_budget,
    lease_name,
    parse_lease,
)
from tramontane_router.limits.types import Demand, LimitKey

LIMIT = 1000
INTERVAL_S, LEASE_S, WINDOW_S = 0.1, 1, 2.0
NS = "tramontane-system"
KEY: LimitKey = ("acme", "tokens")
LEASES = "coordination.k8s.io/v1/leases"
SHARES = {"a": 0.80, "b": 0.15, "c": 0.05}  # of a total demand of twice the limit per window


class FakeLimiter:
    """One replica's limiter: admits its asks under its cap in a sliding window."""

    def __init__(self, name: str, ledger: deque[tuple[float, str, float]]) -> None:
        self.name = name
        self.ledger = ledger
        self.ask = 2 * LIMIT * SHARES[name] * INTERVAL_S / WINDOW_S  # per round
        self.caps: dict[LimitKey, float] = {}  # 0 until the exchange says otherwise
        self.admitted: deque[tuple[float, float]] = deque()

    def used(self) -> float:
        cutoff = time.monotonic() - WINDOW_S
        while self.admitted and self.admitted[0][0] <= cutoff:
            self.admitted.popleft()
        return sum(a for _, a in self.admitted)

    def cap(self) -> float:
        return self.caps.get(KEY, 0.0)

    def demands(self) -> list[Demand]:
        take = max(0.0, min(self.ask, self.cap() - self.used()))
        if take > 0:
            now = time.monotonic()
            self.admitted.append((now, take))
            self.ledger.append((now, self.name, take))
        return [Demand("acme", "tokens", LIMIT, self.used(), self.ask)]

    def set_caps(self, caps: Mapping[LimitKey, float]) -> None:
        self.caps.update(caps)


class Replicas:
    def __init__(self, hub: Cluster) -> None:
        self.hub = hub
        self.ledger: deque[tuple[float, str, float]] = deque()
        self.limiters = {n: FakeLimiter(n, self.ledger) for n in SHARES}
        # Router replicas' clients: their User-Agent puts them under the chart's RBAC check.
        self.clients = {
            n: KubeClient(n, ClusterConfig(server=hub.url), attempts=1, user_agent=USER_AGENT)
            for n in SHARES
        }
        self.exchanges = {
            n: BudgetExchange(
                self.clients[n],
                NS,
                n,
                self.limiters[n],
                interval_s=INTERVAL_S,
                lease_duration_s=LEASE_S,
                window_s=WINDOW_S,
            )
            for n in SHARES
        }
        self.problems: list[str] = []
        self.checks = 0
        self.bound: Callable[[], tuple[set[str], float]] | None = None

    def dead(self) -> set[str]:
        """Replicas whose Lease is older than lease + window: their caps are free."""
        peers = [parse_lease(x) for x in self.hub.emulator.stored_all(LEASES)]
        return {p.replica for p in peers if p and time.time() > p.renewed + p.duration_s + WINDOW_S}

    def published(self, dead: Collection[str] = ()) -> dict[str, float]:
        out = {}
        for lease in self.hub.emulator.stored_all(LEASES):
            holder = lease["spec"]["holderIdentity"]
            budget = decode_budget(lease["metadata"]["annotations"][BUDGET_ANNOTATION])
            if holder not in dead:
                out[holder] = budget[KEY].cap if KEY in budget else 0.0
        return out

    def enforced(self, dead: Collection[str] = ()) -> dict[str, float]:
        """Each replica's cap; for a dead one, what it still has in its window."""
        return {n: lim.used() if n in dead else lim.cap() for n, lim in self.limiters.items()}

    def admitted_in_window(self) -> float:
        cutoff = time.monotonic() - WINDOW_S
        return sum(a for t, _, a in self.ledger if t > cutoff)

    async def watch(self) -> None:
        while True:
            self.checks += 1
            dead = self.dead()
            published, enforced = self.published(dead), self.enforced(dead)
            for what, caps in (("published", published), ("enforced", enforced)):
                if sum(caps.values()) > LIMIT + 1e-6:
                    self.problems.append(f"{what} caps {caps} above {LIMIT}")
            if self.admitted_in_window() > LIMIT + 1e-6:
                self.problems.append(f"admitted {self.admitted_in_window()} in a window")
            if self.bound is not None:
                names, most = self.bound()
                held = sum(enforced[n] for n in names)
                if held > most + 1e-6:
                    self.problems.append(f"{sorted(names)} hold {held} > {most}")
            await asyncio.sleep(0.01)


@pytest.fixture
async def replicas(hub: Cluster) -> AsyncIterator[Replicas]:
    made = Replicas(hub)
    for exchange in made.exchanges.values():
        exchange.start()
    watcher = asyncio.create_task(made.watch())
    try:
        yield made
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        for exchange in made.exchanges.values():
            await exchange.stop()
        for client in made.clients.values():
            await client.close()
    assert made.checks > 10
    assert made.problems == [], made.problems[:5]


async def converged(r: Replicas) -> dict[str, float]:
    """Water-filling 1600/300/100 over 1000 gives 600/300/100: wait until close to it."""

    def near() -> dict[str, float] | None:
        caps = r.enforced()
        ok = caps["a"] >= 540 and caps["b"] >= 270 and caps["c"] >= 90
        return caps if ok and sum(caps.values()) >= 0.9 * LIMIT else None

    caps: dict[str, float] = await eventually(near, timeout_s=10)
    return caps


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- tests
async def test_skewed_demand_converges_within_the_limit(hub: Cluster, replicas: Replicas) -> None:
    caps = await converged(replicas)
    assert caps["a"] > caps["b"] > caps["c"] > 0
    # The Leases are what the design says: one per replica, labelled, with the budget.
    leases = hub.emulator.stored_all(LEASES)
    assert sorted(x["metadata"]["name"] for x in leases) == [lease_name(n) for n in "abc"]
    for lease in leases:
        assert lease["metadata"]["namespace"] == NS
        assert LEASE_LABELS.items() <= lease["metadata"]["labels"].items()
        assert lease["spec"]["leaseDurationSeconds"] == LEASE_S
        assert lease["spec"]["renewTime"].endswith("Z")
    # Load keeps running for a few windows (the watcher checks every observation); what is
    # admitted per window, sampled over two windows, is most of the limit.
    await asyncio.sleep(WINDOW_S)
    samples = []
    for _ in range(20):
        samples.append(replicas.admitted_in_window())
        await asyncio.sleep(WINDOW_S / 10)
    assert 0.85 * LIMIT <= sum(samples) / len(samples) <= LIMIT, samples


async def test_a_killed_replica_is_freed_only_after_lease_and_window(
    hub: Cluster, replicas: Replicas
) -> None:
    await converged(replicas)
    await replicas.exchanges["c"].stop()  # killed: no more rounds, no more admissions
    replicas.limiters["c"].ask = 0
    await asyncio.sleep(2 * INTERVAL_S)  # let any write in flight land
    peer = parse_lease(hub.emulator.stored(LEASES, NS, lease_name("c")) or {})
    assert peer is not None
    last_cap = peer.budget[KEY].cap
    assert last_cap > 0
    dead_at = peer.renewed + LEASE_S + WINDOW_S
    replicas.bound = lambda: (
        ({"a", "b"}, LIMIT - last_cap) if time.time() < dead_at - INTERVAL_S else ({"a"}, LIMIT)
    )
    # a wants far more than it holds: it takes c's share once c is dead, not before.
    grown: dict[str, float] = await eventually(
        lambda: (caps := replicas.enforced())["a"] + caps["b"] > LIMIT - last_cap + 1 and caps,
        timeout_s=LEASE_S + WINDOW_S + 5,
    )
    assert time.time() >= dead_at - INTERVAL_S, "c's cap freed before its lease and window"
    assert grown["a"] + grown["b"] <= LIMIT


async def test_a_partitioned_replica_falls_back_and_is_freed_after_lease_and_window(
    hub: Cluster, replicas: Replicas
) -> None:
    await converged(replicas)
    b = replicas.exchanges["b"]
    healthy = b.client
    b.client = KubeClient("cut", ClusterConfig(server=f"http://127.0.0.1:{closed_port()}"),
                          attempts=1, timeout_s=0.2)  # fmt: skip
    try:
        await asyncio.sleep(2 * INTERVAL_S)  # let any round in flight finish
        assert b.last_ok is not None
        last_ok, last_cap = b.last_ok, b.published[KEY].cap
        dead_at = time.time() + LEASE_S + WINDOW_S - (time.monotonic() - last_ok)
        replicas.bound = lambda: (
            ({"a", "c"}, LIMIT - last_cap) if time.time() < dead_at - INTERVAL_S else ({"a"}, LIMIT)
        )
        # Within its lease it keeps its cap ...
        assert time.monotonic() - last_ok < LEASE_S
        assert replicas.limiters["b"].cap() == pytest.approx(last_cap)
        # ... then falls back to a cap of 0: it admits nothing new.
        await asyncio.sleep(max(0.0, last_ok + LEASE_S + 2 * INTERVAL_S - time.monotonic()))
        lim = replicas.limiters["b"]
        assert lim.cap() == 0
        before = sum(a for _, n, a in replicas.ledger if n == "b")
        # The others take b's share only once its lease is dead.
        await eventually(
            lambda: (caps := replicas.enforced())["a"] + caps["c"] > LIMIT - last_cap + 1,
            timeout_s=LEASE_S + WINDOW_S + 5,
        )
        assert time.time() >= dead_at - INTERVAL_S, "b's cap freed before its lease and window"
        assert sum(a for _, n, a in replicas.ledger if n == "b") == before, "b admitted more"
    finally:
        cut, b.client = b.client, healthy
        await cut.close()
    # Back on the hub, b rejoins from 0 and gets a share again.
    await eventually(lambda: replicas.limiters["b"].cap() > 50, timeout_s=10)


def old_lease(replica: str, renewed: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": lease_name(replica), "namespace": NS, "labels": dict(LEASE_LABELS)},
        "spec": {"holderIdentity": replica, "renewTime": renewed, "leaseDurationSeconds": 10},
    }


async def test_a_restarted_replica_takes_its_lease_back_and_dead_ones_are_deleted(
    hub: Cluster,
) -> None:
    """Two paths no other test takes: a replica whose Lease is already there (its container
    restarted in the same pod: create answers 409, it reads the Lease and patches it), and the
    Lease of a replica gone for longer than `gc_after_s`, which the next round deletes."""
    api = KubeClient("test", ClusterConfig(server=hub.url), attempts=1)
    client = KubeClient("a", ClusterConfig(server=hub.url), attempts=1, user_agent=USER_AGENT)
    try:
        await api.create(LEASE, old_lease("a", "2020-01-01T00:00:00.000000Z"))
        await api.create(LEASE, old_lease("gone", "2020-01-01T00:00:00.000000Z"))
        limiter = FakeLimiter("a", deque())
        exchange = BudgetExchange(
            client, NS, "a", limiter, lease_duration_s=LEASE_S, window_s=WINDOW_S, gc_after_s=60
        )
        peers = await exchange.observe()
        assert peers == {}  # "gone" is dead, and long enough: deleted
        assert hub.emulator.stored(LEASES, NS, lease_name("gone")) is None
        assert await exchange.publish(peers)
        lease = hub.emulator.stored(LEASES, NS, lease_name("a"))
        assert lease is not None
        peer = parse_lease(lease)
        assert peer is not None and peer.replica == "a"
        assert peer.renewed > time.time() - 60  # renewed now, not in 2020
    finally:
        await api.close()
        await client.close()
