"""One fair wait queue per model's set of pools, sized from their ready replicas.

A request that the tenant's limits admitted takes a slot of the queue of the pools its model
runs on (its route's endpoints; two tenants' models are different queues, a base model and
its adapters share one). The queue's capacity is the pools' ready replicas times
`slots_per_replica` (the Serve deployment's `max_ongoing_requests`, 16 by default): below it a
request goes straight through; above it, it waits its tenant's fair turn (`fairness.py`).
The cost charged to the tenant is its token reservation when its limits computed one, else a
cheap estimate (characters / 4 plus `max_tokens`, or `DEFAULT_COMPLETION`); either way it is
corrected to the real tokens when the request ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from tramontane_workers.contract import inference_pb2 as pb

from ..table import Route, TenantView
from .fairness import FairQueue, Ticket

DEFAULT_COMPLETION = 256
QueueKey = tuple[tuple[str, str], ...]


@dataclass
class Slot:
    key: QueueKey
    queue: FairQueue
    ticket: Ticket


def estimate_cost(request: pb.ChatRequest) -> int:
    chars = sum(len(m.content) for m in request.messages)
    completion = request.max_tokens if request.HasField("max_tokens") else DEFAULT_COMPLETION
    return chars // 4 + completion


class ModelQueues:
    def __init__(self, *, slots_per_replica: int = 16, max_waiting: int = 1024) -> None:
        self.slots_per_replica = slots_per_replica
        self.max_waiting = max_waiting
        self._queues: dict[QueueKey, FairQueue] = {}
        self._capacity: dict[QueueKey, int] = {}

    def _queue(self, route: Route) -> tuple[QueueKey, FairQueue]:
        pools = {e.key: e for e in route.endpoints}
        key = tuple(sorted(pools))
        capacity = sum(e.ready_replicas for e in pools.values()) * self.slots_per_replica
        queue = self._queues.get(key)
        if queue is None:
            self._capacity[key] = capacity
            queue = self._queues[key] = FairQueue(
                lambda: self._capacity.get(key, 0), max_waiting=self.max_waiting
            )
        elif self._capacity.get(key) != capacity:
            self._capacity[key] = capacity
            queue.capacity_changed()
        return key, queue

    async def acquire(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, cost: int | None,
        deadline: float,
    ) -> Slot:  # fmt: skip
        key, queue = self._queue(route)
        estimate = cost if cost is not None else estimate_cost(request)
        ticket = await queue.acquire(tenant.name, tenant.fair_share_weight, estimate, deadline)
        return Slot(key, queue, ticket)

    def release(self, slot: Slot, usage: pb.Usage | None) -> None:
        actual = usage.prompt_tokens + usage.completion_tokens if usage is not None else None
        slot.queue.release(slot.ticket, actual)
        idle = slot.queue.in_use == 0 and slot.queue.waiting == 0
        if idle and self._queues.get(slot.key) is slot.queue:
            del self._queues[slot.key]
            self._capacity.pop(slot.key, None)

    @property
    def waiting(self) -> int:
        return sum(q.waiting for q in self._queues.values())
