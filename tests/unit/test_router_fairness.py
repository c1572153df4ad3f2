"""The fair wait queue in front of a model's pools: who is served next, and that nothing leaks.

Orderings and shares are asserted, never timings: with capacity 1, every release hands the slot
to exactly one waiter, so the order in which waiters wake is the dispatch order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tramontane_router.errors import DeadlineExceeded, RateLimited
from tramontane_router.limits.fairness import FairQueue, Ticket

FAR = 1e12  # a deadline that never comes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cap:
    """A capacity the test changes, as ready replicas would."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


@dataclass(eq=False)
class Req:
    tenant: str
    n: int  # this tenant's n-th request, in arrival order
    cost: float
    task: asyncio.Task[Ticket] | None = None
    ticket: Ticket | None = None


@dataclass
class Bench:
    """Requests in flight against one queue, and the order in which they were served."""

    q: FairQueue
    submitted: list[Req] = field(default_factory=list)
    served: list[Req] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def submit(
        self, tenant: str, *, weight: float = 1.0, cost: float = 10.0, deadline: float = FAR
    ) -> Req:
        n = self.counts.get(tenant, 0)
        self.counts[tenant] = n + 1
        req = Req(tenant, n, cost)

        async def wait() -> Ticket:
            req.ticket = await self.q.acquire(tenant, weight, cost, deadline)
            self.served.append(req)
            return req.ticket

        req.task = asyncio.get_running_loop().create_task(wait())
        self.submitted.append(req)
        return req

    async def serve_one_at_a_time(self, held: Ticket, dispatches: int | None = None) -> list[Req]:
        """With capacity 1: release the holder, let exactly one waiter in, repeat."""
        order: list[Req] = []
        ticket = held
        while dispatches is None or len(order) < dispatches:
            before = len(self.served)
            self.q.release(ticket)
            await settle()
            if len(self.served) == before:
                break
            assert len(self.served) == before + 1  # one slot, one grant
            req = self.served[-1]
            assert req.ticket is not None
            ticket = req.ticket
            order.append(req)
        return order


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def refused_at_once(q: FairQueue, tenant: str, deadline: float = FAR) -> BaseException:
    """The error `acquire` answers without waiting (a queue that waits instead fails here
    rather than hanging the test)."""
    task = asyncio.get_running_loop().create_task(q.acquire(tenant, 1.0, 1.0, deadline))
    await settle()
    if not task.done():
        task.cancel()
        pytest.fail("acquire waited instead of answering at once")
    error = task.exception()
    assert error is not None
    return error


async def test_free_slot_is_granted_at_once_and_counted() -> None:
    q = FairQueue(Cap(2))
    t1 = await q.acquire("a", 1.0, 5.0, FAR)
    t2 = await q.acquire("b", 1.0, 5.0, FAR)
    assert (q.in_use, q.waiting) == (2, 0)
    q.release(t1)
    q.release(t2)
    assert (q.in_use, q.waiting) == (0, 0)


async def test_flooding_tenant_does_not_starve_a_light_one() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)  # A's first request takes the only slot
    for _ in range(40):  # ten times B's load, queued first
        bench.submit("A")
    await settle()
    for _ in range(4):
        bench.submit("B")
    await settle()
    assert q.waiting == 44

    order = [r.tenant for r in await bench.serve_one_at_a_time(held)]

    assert len(order) == 44 and order.count("B") == 4
    # FIFO would serve B at dispatches 42..45; VTC interleaves B from its first chance on.
    assert order[:8] == ["A", "B"] * 4
    assert (q.in_use, q.waiting) == (0, 0)


async def test_weights_share_dispatches_three_to_one() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("Z", 1.0, 0.0, FAR)
    for _ in range(600):
        bench.submit("A", weight=1.0, cost=10.0)
        bench.submit("B", weight=3.0, cost=10.0)
    await settle()

    order = await bench.serve_one_at_a_time(held, dispatches=400)

    # VTC's bound: while both are backlogged, served cost / weight of the two stay within
    # one dispatch's charge (10 / 1) of each other -- checked after every dispatch, not just
    # at the end. Over 400 dispatches that pins B's share to 3/4 within 10 / (400 * 10) * 3.
    a = b = 0.0
    for req in order:
        if req.tenant == "A":
            a += req.cost
        else:
            b += req.cost
        assert abs(a / 1.0 - b / 3.0) <= 10.0
    share_b = b / (a + b)
    assert 0.74 <= share_b <= 0.76, share_b
    assert bench.counts["B"] > sum(r.tenant == "B" for r in order)  # B stayed backlogged
    await _cancel_pending(bench)


async def test_costs_count_tokens_not_requests() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("Z", 1.0, 0.0, FAR)
    for _ in range(100):
        bench.submit("A", cost=100.0)  # long answers
    for _ in range(400):
        bench.submit("B", cost=10.0)  # short ones
    await settle()

    order = await bench.serve_one_at_a_time(held, dispatches=330)

    tokens = {"A": 0.0, "B": 0.0}
    for req in order:
        tokens[req.tenant] += req.cost
        assert abs(tokens["A"] - tokens["B"]) <= 100.0  # within one long request
    n_a = sum(r.tenant == "A" for r in order)
    n_b = len(order) - n_a
    assert 9.0 <= n_b / n_a <= 11.0, (n_a, n_b)  # ~10x more short requests: 30 vs 300
    await _cancel_pending(bench)


async def test_release_with_actual_cost_corrects_the_counter() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("A", 2.0, 100.0, FAR)  # estimated 100 tokens, weight 2
    assert q.counter("A") == 50.0
    b_req = bench.submit("B", cost=30.0)
    a_req = bench.submit("A", cost=10.0)
    await settle()
    assert q.counter("B") == 50.0  # lifted to the lowest active counter on arrival

    q.release(held, actual_cost=20.0)  # really used 20: A's counter drops to 10
    await settle()
    assert q.counter("A") == 10.0 + 10.0 / 1.0  # corrected, then charged for a_req (weight 1)
    assert bench.served == [a_req]  # A's counter (10) is now below B's (50): A goes first
    assert a_req.ticket is not None
    q.release(a_req.ticket, actual_cost=None)  # no correction
    await settle()
    assert q.counter("A") == 20.0
    assert bench.served[-1] is b_req


async def test_fifo_within_a_tenant() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)
    for i in range(30):
        bench.submit("A" if i % 3 else "B", cost=float(1 + i % 7))
    await settle()

    order = await bench.serve_one_at_a_time(held)

    for tenant in ("A", "B"):
        ns = [r.n for r in order if r.tenant == tenant]
        assert ns == sorted(ns) and len(ns) == bench.counts[tenant]


async def test_idle_tenant_does_not_bank_credit() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("B", 1.0, 10.0, FAR)
    for _ in range(60):
        bench.submit("B")
    await settle()
    first = await bench.serve_one_at_a_time(held, dispatches=50)  # A idle all along
    assert {r.tenant for r in first} == {"B"}
    for _ in range(20):
        bench.submit("A")
    await settle()
    assert q.counter("A") == q.counter("B")  # lifted, not left at 0

    last = first[-1].ticket
    assert last is not None
    order = [r.tenant for r in await bench.serve_one_at_a_time(last, dispatches=10)]
    # Without the lift A would take all ten slots to "catch up" on the time it was idle.
    assert order.count("A") == 5 and order.count("B") == 5
    await _cancel_pending(bench)


async def test_counters_of_long_idle_tenants_are_forgotten() -> None:
    clock = FakeClock()
    q = FairQueue(Cap(1), clock=clock, forget_after_s=600.0)
    q.release(await q.acquire("old", 1.0, 10.0, FAR))
    assert q.counter("old") == 10.0
    clock.now += 601.0
    q.release(await q.acquire("new", 1.0, 10.0, FAR))
    assert q.counter("old") is None
    assert q.counter("new") == 20.0  # started at the counter of the last tenant to go idle


async def test_full_queue_rejects_at_once() -> None:
    q = FairQueue(Cap(1), max_waiting=3)
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)
    for tenant in ("A", "B", "C"):
        bench.submit(tenant)
    await settle()

    error = await refused_at_once(q, "D")
    assert isinstance(error, RateLimited)
    assert error.message == "the model's queue is full (3 waiting)"
    assert error.retry_after_s == pytest.approx(1.0)
    assert error.http_status == 429
    assert (q.waiting, q.in_use) == (3, 1)

    q.release(held)  # one served: room for one more waiter
    await settle()
    bench.submit("D")
    await settle()
    assert q.waiting == 3
    await _cancel_pending(bench)


async def test_default_queue_bound_is_named_in_the_rejection() -> None:
    q = FairQueue(Cap(0))
    bench = Bench(q)
    for _ in range(1024):
        bench.submit("A")
    await settle()
    error = await refused_at_once(q, "B")
    assert isinstance(error, RateLimited)
    assert str(error) == "the model's queue is full (1024 waiting)"
    await _cancel_pending(bench)
    assert q.waiting == 0


async def test_deadline_passing_while_waiting_raises_and_leaves_the_queue() -> None:
    q = FairQueue(Cap(1))  # real monotonic clock: the deadline's timer fires
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)
    soon = bench.submit("A", deadline=time.monotonic() + 0.05)
    later = bench.submit("B")
    assert soon.task is not None
    await asyncio.wait({soon.task}, timeout=10.0)  # a guard against hanging, not a timing
    assert soon.task.done()
    assert isinstance(soon.task.exception(), DeadlineExceeded)
    assert q.waiting == 1 and q.in_use == 1

    q.release(held)
    await settle()
    assert bench.served == [later]
    assert later.ticket is not None
    q.release(later.ticket)
    assert (q.in_use, q.waiting) == (0, 0)


async def test_deadline_passed_by_the_clock_is_skipped_at_the_next_release() -> None:
    clock = FakeClock()
    q = FairQueue(Cap(1), clock=clock)
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 1.0, FAR)
    expired = bench.submit("A", cost=1.0, deadline=clock.now + 100.0)  # first in line
    other = bench.submit("B", cost=50.0)
    await settle()
    clock.now += 101.0

    q.release(held)
    await settle()
    assert expired.task is not None and expired.task.done()
    assert isinstance(expired.task.exception(), DeadlineExceeded)
    assert bench.served == [other]
    assert (q.in_use, q.waiting) == (1, 0)

    # It would have to wait, and its deadline is already gone.
    assert isinstance(await refused_at_once(q, "C", clock.now), DeadlineExceeded)
    assert q.waiting == 0


async def test_cancelled_waiter_leaves_and_no_slot_leaks() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)
    gone = bench.submit("A")
    stays = [bench.submit("A"), bench.submit("B")]
    await settle()
    assert gone.task is not None
    gone.task.cancel()
    await settle()
    assert gone.task.cancelled()
    assert q.waiting == 2

    order = await bench.serve_one_at_a_time(held)
    assert sorted(map(id, order)) == sorted(map(id, stays))
    assert gone.ticket is None
    assert (q.in_use, q.waiting) == (0, 0)


async def test_cancelled_just_as_granted_gives_the_slot_to_the_next() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)
    first = bench.submit("A", cost=10.0)
    second = bench.submit("B", cost=10.0)
    await settle()
    before = q.counter("A")

    q.release(held)  # grants `first` ...
    assert first.task is not None
    first.task.cancel()  # ... whose client goes away before it runs
    await settle()

    assert first.task.cancelled() and first not in bench.served
    assert bench.served == [second]
    assert q.in_use == 1 and q.waiting == 0
    assert q.counter("A") == before  # the charge for the unused grant is undone


async def test_release_twice_frees_one_slot() -> None:
    q = FairQueue(Cap(1))
    bench = Bench(q)
    held = await q.acquire("A", 1.0, 10.0, FAR)
    bench.submit("B")
    bench.submit("C")
    await settle()

    q.release(held)
    q.release(held)
    await settle()
    assert (q.in_use, q.waiting) == (1, 1)
    assert [r.tenant for r in bench.served] == ["B"]
    await _cancel_pending(bench)


async def test_capacity_growing_lets_more_in() -> None:
    cap = Cap(1)
    q = FairQueue(cap)
    bench = Bench(q)
    await q.acquire("A", 1.0, 10.0, FAR)
    for tenant in "BCDE":
        bench.submit(tenant)
    await settle()
    assert q.waiting == 4

    cap.value = 3
    q.capacity_changed()
    await settle()
    assert (q.in_use, q.waiting) == (3, 2)

    cap.value = 4  # unannounced: the next acquire serves the queue before itself
    late = bench.submit("F")
    await settle()
    assert (q.in_use, q.waiting) == (4, 2)
    assert late not in bench.served
    await _cancel_pending(bench)


async def test_capacity_shrinking_never_revokes_held_slots() -> None:
    cap = Cap(3)
    q = FairQueue(cap)
    bench = Bench(q)
    held = [await q.acquire(t, 1.0, 10.0, FAR) for t in "ABC"]
    cap.value = 1
    waiter = bench.submit("D")
    await settle()
    assert (q.in_use, q.waiting) == (3, 1)

    q.release(held[0])
    q.release(held[1])
    await settle()
    assert (q.in_use, q.waiting) == (1, 1)  # still at the new capacity: D waits
    q.release(held[2])
    await settle()
    assert bench.served == [waiter]
    assert (q.in_use, q.waiting) == (1, 0)


async def test_rejects_nonsense_weight_or_cost() -> None:
    q = FairQueue(Cap(1))
    with pytest.raises(ValueError):
        await q.acquire("A", 0.0, 1.0, FAR)
    with pytest.raises(ValueError):
        await q.acquire("A", 1.0, -1.0, FAR)
    assert (q.in_use, q.waiting) == (0, 0)


async def _cancel_pending(bench: Bench) -> None:
    tasks = [r.task for r in bench.submitted if r.task is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert bench.q.waiting == 0


# -- property: any interleaving of acquires, releases, cancellations and capacity changes ----

TENANTS = ("a", "b", "c", "d")
acquire_op = st.tuples(
    st.just("acquire"),
    st.sampled_from(TENANTS),
    st.sampled_from((0.5, 1.0, 3.0)),
    st.integers(0, 200),
    st.sampled_from((50.0, 150.0, FAR)),  # deadline, after now on the fake clock
)
# release: which ticket, the actual cost, release it twice?, cancel a waiter in the same
# breath (it may be the one the release just granted: the client leaves as its turn comes)
release_op = st.tuples(
    st.just("release"),
    st.integers(0, 50),
    st.none() | st.integers(0, 300),
    st.booleans(),
    st.none() | st.integers(0, 50),
)
cancel_op = st.tuples(st.just("cancel"), st.integers(0, 50))
capacity_op = st.tuples(st.just("capacity"), st.integers(0, 4))
tick_op = st.tuples(st.just("tick"), st.sampled_from((10.0, 60.0)))
ops_strategy = st.lists(
    st.one_of(acquire_op, acquire_op, release_op, cancel_op, capacity_op, tick_op), max_size=60
)


async def _run_ops(ops: list[tuple[object, ...]]) -> None:
    clock = FakeClock()
    cap = Cap(2)
    q = FairQueue(cap, max_waiting=4, clock=clock)
    bench = Bench(q)
    reqs: list[tuple[Req, float]] = []
    held: list[Ticket] = []
    cancelled: list[Req] = []

    def pending() -> list[Req]:
        return [r for r, _ in reqs if r.task is not None and not r.task.done()]

    for op in ops:
        in_use_before, served_before = q.in_use, len(bench.served)
        kind = op[0]
        if kind == "acquire":
            _, tenant, weight, cost, offset = op
            assert isinstance(tenant, str) and isinstance(offset, float)
            assert isinstance(weight, float) and isinstance(cost, int)
            if q.waiting >= 4:
                assert isinstance(await refused_at_once(q, tenant), RateLimited)
            else:
                deadline = clock.now + offset
                reqs.append(
                    (
                        bench.submit(tenant, weight=weight, cost=float(cost), deadline=deadline),
                        deadline,
                    )
                )
        elif kind == "release" and held:
            _, i, actual, twice, leaving = op
            assert isinstance(i, int) and (actual is None or isinstance(actual, int))
            ticket = held.pop(i % len(held))
            q.release(ticket, None if actual is None else float(actual))
            if twice:
                q.release(ticket)
            if isinstance(leaving, int) and pending():
                victims = pending()
                victim = victims[leaving % len(victims)]
                assert victim.task is not None
                victim.task.cancel()
                cancelled.append(victim)
        elif kind == "cancel" and pending():
            _, i = op
            assert isinstance(i, int)
            victims = pending()
            victim = victims[i % len(victims)]
            assert victim.task is not None
            victim.task.cancel()
            cancelled.append(victim)
        elif kind == "capacity":
            assert isinstance(op[1], int)
            cap.value = op[1]
            q.capacity_changed()
        elif kind == "tick":
            assert isinstance(op[1], float)
            clock.now += op[1]
        await settle()

        held.extend(r.ticket for r in bench.served[served_before:] if r.ticket is not None)
        assert q.in_use == len(held)  # every grant is a ticket someone holds; none leaked
        assert q.waiting == len(pending())
        if q.in_use > in_use_before:
            assert q.in_use <= cap.value  # grants never go past the capacity of the moment
        assert q.waiting == 0 or q.in_use >= cap.value  # nobody waits while a slot is free
        for tenant in TENANTS:  # FIFO within a tenant
            ns = [r.n for r in bench.served if r.tenant == tenant]
            assert ns == sorted(ns)

    # No starvation: once capacity is there, every waiter still alive is served.
    cap.value = 100
    q.capacity_changed()
    await settle()
    assert pending() == []
    for req, deadline in reqs:
        assert req.task is not None
        if req in cancelled:
            assert req.ticket is None
        elif req.ticket is None:  # not served: only because its deadline passed
            assert isinstance(req.task.exception(), DeadlineExceeded)
            assert deadline <= clock.now
    for req in bench.served:
        assert req.ticket is not None
        q.release(req.ticket)
    assert (q.in_use, q.waiting) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy)
def test_any_interleaving_keeps_capacity_leaks_nothing_and_starves_no_one(
    ops: list[tuple[object, ...]],
) -> None:
    asyncio.run(_run_ops(ops))
