"""Fair share under overload: a bounded wait queue per model, scheduled by virtual token counter.

When a model's ready pools are saturated (`capacity()` requests already hold a slot), a request
waits here instead of piling onto the workers. Who is served next is decided by the Virtual
Token Counter of Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024):

- every tenant has a counter; when one of its requests is dispatched the counter grows by
  `cost / weight` (cost: the request's estimated tokens, prompt plus expected completion), and
  `release(ticket, actual_cost)` corrects it by `(actual - estimate) / weight`;
- when a slot frees, the head (FIFO within a tenant) of the waiting tenant with the lowest
  counter is served; ties go to the request that has waited longest;
- a tenant that becomes active (starts waiting or holding a slot after being idle) has its
  counter lifted to at least the lowest counter of the tenants active now (or, when none is,
  of the tenant that went idle last): idling does not bank credit to spend in a burst later.

Counters are in tokens, not requests, because requests are not alike: a tenant of long answers
counted per request would get ten times the GPU of a tenant of short ones at "equal" share. In
tokens, a tenant flooding at ten times its share gets its weighted share and no more, and the
others keep theirs. Service is weighted: backlogged tenants' `served tokens / weight` stay
within a few requests' charge of each other (the paper's bound).

The queue is bounded: with `max_waiting` requests already waiting a request is refused at once
with `RateLimited` ("the model's queue is full (N waiting)", retry after ~1 s): a 429 /
RESOURCE_EXHAUSTED the client can back off on, not a wait that ends in a timeout anyway. A
waiter whose deadline (a `clock()` time) passes raises `DeadlineExceeded` and leaves the queue;
a waiter whose task is cancelled (the client went away) leaves it too and never holds a slot.
Counters of tenants idle for `forget_after_s` are dropped, so memory follows the active tenants.
Everything runs on the event loop: no threads, no I/O; a decision costs O(active tenants).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import DeadlineExceeded, RateLimited

QUEUE_FULL_RETRY_AFTER_S = 1.0


@dataclass(eq=False)
class Ticket:
    """A held slot: give it back with `FairQueue.release` (once is enough; twice is harmless)."""

    tenant: str
    weight: float
    cost: float  # the estimate charged at dispatch
    released: bool = field(default=False, init=False)


@dataclass(eq=False)
class _Waiter:
    tenant: str
    weight: float
    cost: float
    deadline: float
    seq: int
    future: asyncio.Future[Ticket]


class FairQueue:
    """The wait queue in front of one model's pools."""

    def __init__(
        self,
        capacity: Callable[[], int],
        *,
        max_waiting: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        forget_after_s: float = 600.0,
    ) -> None:
        self._capacity = capacity
        self._max_waiting = max_waiting
        self._clock = clock
        self._forget_after_s = forget_after_s
        self._queues: dict[str, deque[_Waiter]] = {}  # tenants with waiters only
        self._held: dict[str, int] = {}  # tenants holding slots only
        self._counters: dict[str, float] = {}  # active tenants and recently idle ones
        self._idle_since: dict[str, float] = {}  # insertion order = order they went idle
        self._last_idle_counter = 0.0
        self._waiting = 0
        self._in_use = 0
        self._seq = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def in_use(self) -> int:
        return self._in_use

    def counter(self, tenant: str) -> float | None:
        """A tenant's virtual token counter (None once forgotten or never seen)."""
        return self._counters.get(tenant)

    async def acquire(self, tenant: str, weight: float, cost: float, deadline: float) -> Ticket:
        """A slot for one request: at once if one is free and nobody waits, else in fair order.

        Raises `RateLimited` when the queue is full, `DeadlineExceeded` when `deadline` passes
        first; on cancellation the request leaves the queue without holding a slot."""
        if not weight > 0 or not cost >= 0:
            raise ValueError(f"weight must be > 0 and cost >= 0 (got {weight}, {cost})")
        self._pump()  # capacity may have grown since the last decision
        if self._waiting == 0 and self._in_use < self._capacity():
            self._activate(tenant)
            return self._grant(tenant, weight, cost)
        if self._waiting >= self._max_waiting:
            raise RateLimited(
                f"the model's queue is full ({self._waiting} waiting)",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        now = self._clock()
        if deadline <= now:
            raise DeadlineExceeded("the request's deadline passed while the model was saturated")
        loop = asyncio.get_running_loop()
        self._activate(tenant)
        self._seq += 1
        waiter = _Waiter(tenant, weight, cost, deadline, self._seq, loop.create_future())
        timer = loop.call_later(deadline - now, self._expire, waiter)
        self._queues.setdefault(tenant, deque()).append(waiter)
        self._waiting += 1
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if not waiter.future.done() or waiter.future.cancelled():
                self._remove(waiter)
            elif waiter.future.exception() is None:  # granted as we were cancelled
                self.release(waiter.future.result(), 0.0)  # never used: undo the charge too
            raise
        finally:
            timer.cancel()

    def release(self, ticket: Ticket, actual_cost: float | None = None) -> None:
        """Free the ticket's slot and serve the next waiter; `actual_cost` (tokens really used)
        corrects the tenant's counter. A second release of the same ticket does nothing."""
        if ticket.released:
            return
        ticket.released = True
        tenant = ticket.tenant
        if actual_cost is not None and tenant in self._counters:
            self._counters[tenant] += (actual_cost - ticket.cost) / ticket.weight
        self._in_use -= 1
        held = self._held[tenant] - 1
        if held:
            self._held[tenant] = held
        else:
            del self._held[tenant]
            self._maybe_idle(tenant)
        self._pump()

    def capacity_changed(self) -> None:
        """Serve waiters now if `capacity()` grew (else the next acquire or release does)."""
        self._pump()

    # -- decisions ------------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._waiting and self._in_use < self._capacity():
            tenant = min(
                self._queues,
                key=lambda t: (self._counters[t], self._queues[t][0].seq),
            )
            waiter = self._queues[tenant][0]
            if waiter.deadline <= self._clock():
                self._expire(waiter)
                continue
            self._remove(waiter, keep_active=True)
            waiter.future.set_result(self._grant(tenant, waiter.weight, waiter.cost))

    def _grant(self, tenant: str, weight: float, cost: float) -> Ticket:
        self._in_use += 1
        self._held[tenant] = self._held.get(tenant, 0) + 1
        self._counters[tenant] += cost / weight
        return Ticket(tenant, weight, cost)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self._remove(waiter)
        waiter.future.set_exception(
            DeadlineExceeded("the request's deadline passed while it waited for the model")
        )

    def _remove(self, waiter: _Waiter, *, keep_active: bool = False) -> None:
        queue = self._queues.get(waiter.tenant)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        self._waiting -= 1
        if not queue:
            del self._queues[waiter.tenant]
            if not keep_active:
                self._maybe_idle(waiter.tenant)

    # -- counters -------------------------------------------------------------------------------

    def _activate(self, tenant: str) -> None:
        """Lift a tenant that was idle to the lowest active counter (VTC's rule)."""
        if tenant in self._queues or tenant in self._held:
            return
        active = [self._counters[t] for t in self._queues.keys() | self._held.keys()]
        floor = min(active) if active else self._last_idle_counter
        self._counters[tenant] = max(self._counters.get(tenant, floor), floor)
        self._idle_since.pop(tenant, None)
        self._forget()

    def _maybe_idle(self, tenant: str) -> None:
        if tenant in self._queues or tenant in self._held:
            return
        self._last_idle_counter = self._counters[tenant]
        self._idle_since.pop(tenant, None)
        self._idle_since[tenant] = self._clock()
        self._forget()

    def _forget(self) -> None:
        horizon = self._clock() - self._forget_after_s
        while self._idle_since:
            tenant, since = next(iter(self._idle_since.items()))
            if since > horizon:
                break
            del self._idle_since[tenant]
            del self._counters[tenant]
