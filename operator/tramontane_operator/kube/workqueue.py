"""A work queue of object keys with client-go's guarantees, and two priorities.

- A key is queued at most once, however often it is added (events collapse).
- A key is never handed to two workers at once; added while a worker holds it, it is
  queued again when that worker is `done`.
- `add_after` queues a key after a delay (retries, resyncs); the earliest pending delay wins.
- `HIGH` keys are handed out before `LOW` ones: a new or changed object is worked on before
  a refresh of one that is already converged (a child's status moving, a resync), as in
  controller-runtime's priority queue. A key added at `HIGH` while queued `LOW` moves up.
  So that refreshes never starve under sustained load, one key in `LOW_SHARE` comes from
  the `LOW` lane while it holds any.
- `retry` queues a key after a per-key exponential backoff with jitter (client-go's
  rate-limited queue: `base x 2^failures`, capped), and `succeeded` resets it: a persistent
  error (a 403, a member that is down) is retried with growing delays, not in a storm.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

HIGH = 0
LOW = 1
LOW_SHARE = 16

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        on_get: Callable[[int, float], None] | None = None,
        *,
        base_delay_s: float = 0.05,
        max_delay_s: float = 300.0,
        jitter: float = 0.2,
    ) -> None:
        """`on_get(priority, waited_s)` is told how long each key handed out had waited;
        `retry` waits `base_delay_s x 2^failures` up to `max_delay_s`, +/- `jitter` of it."""
        self.on_get = on_get
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.jitter = jitter
        self._failures: dict[K, int] = {}
        self._added_at: dict[K, float] = {}
        self._lanes: tuple[deque[K], deque[K]] = (deque(), deque())
        self._queued: dict[K, int] = {}  # key -> the lane it waits in
        self._counts = [0, 0]  # keys waiting per lane
        self._high_streak = 0  # HIGH keys handed out since the last LOW one
        self._processing: set[K] = set()
        self._dirty: dict[K, int] = {}  # added while processing: requeued on done()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queued)

    def waiting(self, priority: int) -> int:
        """How many keys wait at `priority` (not counting those being processed)."""
        return self._counts[priority]

    def add(self, key: K, priority: int = HIGH) -> None:
        if self._closed:
            return
        if key in self._processing:
            self._dirty[key] = min(priority, self._dirty.get(key, LOW))
            return
        lane = self._queued.get(key)
        if lane is not None and lane <= priority:
            return
        if lane is not None:
            self._counts[lane] -= 1
        else:
            self._added_at[key] = asyncio.get_running_loop().time()
        self._counts[priority] += 1
        self._queued[key] = priority  # an entry left in the LOW lane is skipped as stale
        self._lanes[priority].append(key)
        self._wake_one()

    def add_after(self, key: K, delay_s: float, priority: int = LOW) -> None:
        if self._closed:
            return
        if delay_s <= 0:
            self.add(key, priority)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        handle = loop.call_at(when, self._fire, key, priority)
        self._timers[key] = (when, handle)

    def _fire(self, key: K, priority: int) -> None:
        self._timers.pop(key, None)
        self.add(key, priority)

    def forget(self, key: K) -> None:
        """Drop a pending delayed add of `key` and its backoff (the object is gone)."""
        self._failures.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()

    def retry(self, key: K, priority: int = LOW, at_least_s: float = 0.0) -> float:
        """Queue `key` again after its backoff (at least `at_least_s`); the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.base_delay_s * 2.0**failures, self.max_delay_s)
        delay *= 1.0 + self.jitter * (2.0 * random.random() - 1.0)
        delay = max(delay, at_least_s)
        self.add_after(key, delay, priority)
        return delay

    def failures(self, key: K) -> int:
        """How many `retry` calls since the last `succeeded` (client-go's NumRequeues)."""
        return self._failures.get(key, 0)

    def succeeded(self, key: K) -> None:
        """The key's last pass worked: its next failure starts from the base delay again."""
        self._failures.pop(key, None)

    async def get(self) -> K:
        """The next key, highest priority first; it is the caller's until `done(key)`."""
        while True:
            order = (LOW, HIGH) if self._high_streak >= LOW_SHARE - 1 else (HIGH, LOW)
            for lane_no in order:
                lane = self._lanes[lane_no]
                while lane:
                    key = lane.popleft()
                    if self._queued.get(key) != lane_no:
                        continue  # moved to the HIGH lane meanwhile
                    del self._queued[key]
                    self._counts[lane_no] -= 1
                    self._high_streak = self._high_streak + 1 if lane_no == HIGH else 0
                    self._processing.add(key)
                    added = self._added_at.pop(key, None)
                    if self.on_get is not None and added is not None:
                        self.on_get(lane_no, asyncio.get_running_loop().time() - added)
                    return key
            if self._closed:
                raise QueueClosed
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the wake-up on to another worker
                raise

    def done(self, key: K) -> None:
        self._processing.discard(key)
        priority = self._dirty.pop(key, None)
        if priority is not None:
            self.add(key, priority)

    def close(self) -> None:
        """Wake every waiting worker with `QueueClosed`; pending delays are dropped."""
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class QueueClosed(Exception):
    """The queue was closed: the worker should stop."""
