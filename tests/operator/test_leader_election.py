"""Leader election (`tramontane_kube.leader`) against the emulated hub's Lease API.

Electors run on the test's loop, each with its own client, with short timings (lease 1.0 s,
renew deadline 0.7 s, retry 0.2 s). Every `lead()` records its term (start, end) on the
monotonic clock the electors share, so tests can check that no two terms ever overlap. A
crash is an elector cancelled with `release_on_cancel=False` after its client was closed; a
partition is an elector whose client is swapped for one aimed at a port nobody listens on
(the hub stays up for the others).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from operator_harness import Clusters
from tramontane_kube import LEASE, ClusterConfig, KubeClient
from tramontane_kube.leader import LeaderElectionConfig, LeaderElector, LeadershipLost

NAMESPACE, NAME = "tramontane-system", "tramontane-operator"
LEASE_S, DEADLINE_S, RETRY_S = 1.0, 0.7, 0.2
# A standby polls every retry period plus up to 1.2 of it (jitter); allow scheduling slack.
POLL_S = RETRY_S * 2.2 + 0.15


def config(identity: str, **overrides: Any) -> LeaderElectionConfig:
    values: dict[str, Any] = {
        "lease_duration_s": LEASE_S,
        "renew_deadline_s": DEADLINE_S,
        "retry_period_s": RETRY_S,
        **overrides,
    }
    return LeaderElectionConfig(NAMESPACE, NAME, identity, **values)


@dataclass
class Term:
    identity: str
    start: float
    end: float | None = None


@dataclass
class Election:
    """The hub, the electors started on it, and every term any of them led."""

    clusters: Clusters
    terms: list[Term] = field(default_factory=list)
    runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    electors: dict[str, LeaderElector] = field(default_factory=dict)
    clients: list[KubeClient] = field(default_factory=list)

    def client(self, server: str | None = None) -> KubeClient:
        made = KubeClient(
            "hub", ClusterConfig(server=server or self.clusters.hub.url), attempts=1, timeout_s=1
        )
        self.clients.append(made)
        return made

    def lead(self, identity: str) -> Callable[[], Awaitable[None]]:
        async def lead() -> None:
            term = Term(identity, time.monotonic())
            self.terms.append(term)
            try:
                await asyncio.Event().wait()
            finally:
                term.end = time.monotonic()

        return lead

    def start(self, identity: str, **overrides: Any) -> LeaderElector:
        elector = LeaderElector(self.client(), config(identity, **overrides))
        self.electors[identity] = elector
        self.runs[identity] = asyncio.create_task(elector.run(self.lead(identity)))
        return elector

    def leaders(self) -> list[str]:
        return [t.identity for t in self.terms if t.end is None]

    async def leader(self, timeout_s: float = LEASE_S + POLL_S + 1.0) -> str:
        """The one identity leading, once some does."""
        await until(lambda: bool(self.leaders()), timeout_s)
        (leader,) = self.leaders()
        return leader

    async def lease(self) -> dict[str, Any]:
        stored = self.clusters.hub.emulator.stored("coordination.k8s.io/v1/leases", NAMESPACE, NAME)
        assert stored is not None
        spec: dict[str, Any] = stored["spec"]
        return spec

    def assert_no_overlap(self) -> None:
        ordered = sorted(self.terms, key=lambda t: t.start)
        for before, after in itertools.pairwise(ordered):
            assert before.end is not None and before.end <= after.start, (before, after)


async def until(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Seconds it took `predicate` to hold; fails the test after `timeout_s`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"not within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def dead_server() -> str:
    """A loopback URL nothing listens on (a partitioned replica's view of the hub)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def election() -> AsyncIterator[Election]:
    clusters = await Clusters.start("hub", [], validate=False, kuberay_on_hub=False)
    made = Election(clusters)
    try:
        yield made
        made.assert_no_overlap()  # whatever the test did, never two leaders at once
    finally:
        for task in made.runs.values():
            task.cancel()
        await asyncio.gather(*made.runs.values(), return_exceptions=True)
        for client in made.clients:
            await client.close()
        await clusters.close()


async def stop(election: Election, identity: str) -> BaseException | None:
    """Cancel an elector's run; what it ended with (None: cancelled as asked)."""
    task = election.runs[identity]
    task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    return None if isinstance(outcome, asyncio.CancelledError) else outcome


def test_config_refuses_timings_that_allow_two_leaders() -> None:
    with pytest.raises(ValueError, match="greater than the renew deadline"):
        LeaderElectionConfig("ns", "l", "me", lease_duration_s=5, renew_deadline_s=5)
    with pytest.raises(ValueError, match=r"1\.2 x the retry period"):
        LeaderElectionConfig("ns", "l", "me", renew_deadline_s=2, retry_period_s=2)
    with pytest.raises(ValueError, match="identity must not be empty"):
        LeaderElectionConfig("ns", "l", "")
    assert config("me", lease_duration_s=1.5).lease_duration_seconds == 2


async def test_one_leads_the_other_waits(election: Election) -> None:
    a = election.start("a")
    assert await election.leader() == "a"
    b = election.start("b")
    # Longer than a lease: b would have taken over if a had not kept renewing.
    await asyncio.sleep(LEASE_S + POLL_S)
    assert election.leaders() == ["a"] and len(election.terms) == 1
    assert a.is_leader and a.state == "leading"
    assert not b.is_leader and b.state == "standby" and b.holder == "a"
    lease = await election.lease()
    assert lease["holderIdentity"] == "a" and lease["leaseTransitions"] == 0
    assert lease["leaseDurationSeconds"] == 1
    assert await stop(election, "b") is None  # a standby shut down holds nothing
    assert b.state == "idle" and (await election.lease())["holderIdentity"] == "a"


async def test_a_crashed_leader_is_replaced_within_the_lease_duration(
    election: Election,
) -> None:
    election.start("a", release_on_cancel=False)
    await election.leader()
    election.start("b")
    await until(lambda: election.electors["b"].holder == "a", POLL_S)
    await election.electors["a"].client.close()  # the process dies: nothing more reaches the hub
    assert await stop(election, "a") is None
    crashed = time.monotonic()
    assert (await election.lease())["holderIdentity"] == "a"  # not released
    assert await election.leader() == "b"
    took = time.monotonic() - crashed
    # a renewed at most one retry period (plus a round trip) before it died; b waits a whole
    # lease from when it saw that renewal, by its own clock.
    assert LEASE_S - RETRY_S - 0.1 <= took <= LEASE_S + POLL_S + 0.2, took
    lease = await election.lease()
    assert lease["holderIdentity"] == "b" and lease["leaseTransitions"] == 1


async def test_a_graceful_shutdown_releases_the_lease_at_once(election: Election) -> None:
    a = election.start("a")
    await election.leader()
    election.start("b")
    await until(lambda: election.electors["b"].holder == "a", POLL_S)
    assert await stop(election, "a") is None
    stopped = time.monotonic()
    assert a.state == "released" and not a.is_leader
    assert election.terms[0].end is not None and election.terms[0].end <= stopped
    lease = await election.lease()
    assert lease["holderIdentity"] == "" and lease["leaseDurationSeconds"] == 1
    assert await election.leader() == "b"
    assert time.monotonic() - stopped <= POLL_S  # about one retry period, not a lease
    assert (await election.lease())["leaseTransitions"] == 1


async def lost(election: Election, identity: str, timeout_s: float) -> float:
    """Seconds until `identity`'s run ended with LeadershipLost (fails otherwise)."""
    start = time.monotonic()
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(election.runs[identity], timeout_s)
    return time.monotonic() - start


async def test_a_leader_that_cannot_renew_stops_within_the_renew_deadline(
    election: Election,
) -> None:
    a = election.start("a")
    await election.leader()
    await asyncio.sleep(RETRY_S * 2)  # a few renewals in: the deadline runs from the last one
    await election.clusters.hub.stop()
    took = await lost(election, "a", DEADLINE_S + 1.0)
    # Counted from the start of its last successful renewal, at most a retry period (plus a
    # round trip) before the hub went away.
    assert DEADLINE_S - RETRY_S - 0.1 <= took <= DEADLINE_S + 0.15, took
    assert election.terms[0].end is not None  # lead() was cancelled
    assert a.state == "lost" and not a.is_leader
    await election.clusters.hub.start()  # back: the Lease is still a's, and not released
    assert (await election.lease())["holderIdentity"] == "a"


async def test_a_leader_that_sees_another_holder_stops_at_once(election: Election) -> None:
    election.start("a")
    await election.leader()
    intruder = election.client()
    current = await intruder.get(LEASE, NAMESPACE, NAME)
    assert current is not None
    await intruder.replace(LEASE, {**current, "spec": {**current["spec"], "holderIdentity": "x"}})
    took = await lost(election, "a", DEADLINE_S)
    assert took <= RETRY_S + 0.15, took  # at its next renewal, not at the deadline
    assert election.terms[0].end is not None


async def test_a_partitioned_leader_stops_before_the_standby_starts(
    election: Election,
) -> None:
    """The hub is up for the standby but not for the leader: the leader must have cancelled
    its lead() by the time the standby's begins, and it reports the loss."""
    a = election.start("a")
    await election.leader()
    election.start("b")
    await until(lambda: election.electors["b"].holder == "a", POLL_S)
    a.client = election.client(dead_server())
    await lost(election, "a", DEADLINE_S + 1.0)
    assert await election.leader() == "b"
    first, second = election.terms
    assert first.end is not None and first.end < second.start
    # Safety margin: the lease minus the renew deadline, less scheduling noise.
    assert second.start - first.end >= LEASE_S - DEADLINE_S - RETRY_S - 0.1


async def test_never_two_leaders_through_crashes_partitions_and_handovers(
    election: Election,
) -> None:
    """Three candidates; the leader is removed three ways in turn (cut off from the hub, killed
    before it can release, shut down gracefully) and a new candidate joins each time. Every
    removal hands over, the transitions count each, and (fixture) no two terms overlap."""
    for identity in ("a", "b", "c"):
        election.start(identity)
    for joined, way in enumerate(("partition", "crash", "shutdown"), 1):
        leader = await election.leader()
        elector = election.electors[leader]
        if way == "partition":
            elector.client = election.client(dead_server())
            await lost(election, leader, DEADLINE_S + 1.0)
        else:
            if way == "crash":
                await elector.client.close()  # its release cannot reach the hub
            assert await stop(election, leader) is None
            assert elector.state == ("released" if way == "shutdown" else "leading")
        election.start(f"new{joined}")
        await until(lambda leader=leader: election.leaders() not in ([], [leader]), 3.0)
    assert len(election.terms) == 4
    assert (await election.lease())["leaseTransitions"] == 3


async def test_lead_returning_ends_the_term_and_releases(election: Election) -> None:
    elector = LeaderElector(election.client(), config("a"))
    ran: list[bool] = []

    async def lead() -> None:
        ran.append(elector.is_leader)

    await asyncio.wait_for(elector.run(lead), 2.0)
    assert ran == [True] and elector.state == "released"
    assert (await election.lease())["holderIdentity"] == ""
