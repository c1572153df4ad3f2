"""The one reconcile mechanism for every kind: a hub cache feeds a work queue, workers drain it.

As controller-runtime's controllers: the informer of a kind (`indexes.Cache`) tells the
controller of every change; the controller queues the object's key when it needs a reconcile
(it appeared, its spec changed — its generation, as `GenerationChangedPredicate`: the echoes
of our own status writes queue nothing —, it is being deleted, or it is gone); workers run
`process(key, body)` for one key at a time, `body` being the cache's current object (None
once it is gone). Others wake keys too (`queue.add`): a child changed in a member, a member
changed health, a peer released quota.

What `process` returns or raises decides when the key is looked at again:
- `Requeue(delay_s, priority)`, or None (not until something wakes it);
- `Retry(message, delay_s)`: waiting for something outside (a member, a Job) — again after
  `delay_s`; without a delay it is an error, retried after the key's exponential backoff
  with jitter (client-go's rate-limited queue), as any other exception is;
- `Invalid(message)`: cannot succeed until the object changes (a bad spec, a 422 from the
  API server) — not retried; its next generation queues it again.
A pass that ends without an error resets the key's backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tramontane_operator.kube.workqueue import HIGH, LOW, QueueClosed, WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); cluster-scoped kinds use namespace ""
Body = Mapping[str, Any]


@dataclass(frozen=True)
class Requeue:
    delay_s: float
    priority: int = LOW


class Retry(Exception):
    """Look at the key again: after `delay_s` (a wait), or after its backoff (an error)."""

    def __init__(self, message: str, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class Invalid(Exception):
    """The object cannot be reconciled until it changes: not retried."""


def trigger(body: Body) -> tuple[Any, ...]:
    """What a reconcile must follow: the object's identity, spec generation and deletion."""
    meta = body.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))


def key_of(body: Body) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "", meta["name"])


Process = Callable[[Key, Body | None], Awaitable[Requeue | None]]


class Controller:
    """The work queue and workers of one kind."""

    def __init__(
        self,
        kind: str,
        raw: Callable[[Key], Body | None],
        keys: Callable[[], list[Key]],
        process: Process,
        *,
        workers: int,
        ready: Callable[[], Awaitable[None]],
        queue: WorkQueue[Key] | None = None,
    ) -> None:
        self.kind = kind
        self.queue: WorkQueue[Key] = queue if queue is not None else WorkQueue()
        self._raw = raw
        self._keys = keys
        self._process = process
        self._ready = ready
        self._workers = workers
        self._triggers: dict[Key, tuple[Any, ...]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.kind} worker {i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # What queues a key.
    def observed(self, cache_key: Key, obj: Body, gone: bool) -> None:
        """Every watch event of the kind, once the cache has it."""
        if gone:
            if cache_key in self._triggers:  # known: its cleanup is ours to finish
                self.queue.add(cache_key, HIGH)
            return
        if self._triggers.get(cache_key) != trigger(obj):
            self.queue.add(cache_key, HIGH)

    def known(self, key: Key) -> bool:
        """Whether `key` was reconciled and not yet `forget`-ten."""
        return key in self._triggers

    def forget(self, key: Key) -> None:
        """The object is gone and cleaned up: drop what the controller kept of it."""
        self._triggers.pop(key, None)
        self.queue.forget(key)

    def wake(self, key: Key, priority: int = LOW) -> None:
        self.queue.add(key, priority)

    def enqueue_all(self) -> None:
        """Queue every object the cache holds (as a new handler of an informer sees them)."""
        for key in self._keys():
            self.queue.add(key, HIGH)

    def wake_all(self, priority: int = LOW) -> None:
        for key in list(self._triggers):
            self.queue.add(key, priority)

    # The workers.
    async def _worker(self) -> None:
        await self._ready()
        while True:
            try:
                key = await self.queue.get()
            except QueueClosed:
                return
            requeue: Requeue | None = None
            failed: Retry | None = None
            body = self._raw(key)
            if body is not None:
                self._triggers[key] = trigger(body)
            try:
                requeue = await self._process(key, body)
            except Retry as exc:
                failed = exc
            except Invalid as exc:
                log.info("%s %s/%s: not retried until it changes: %s", self.kind, *key, exc)
            except Exception as exc:
                log.exception("reconcile of %s %s/%s failed", self.kind, *key)
                failed = Retry(str(exc))
            finally:
                self.queue.done(key)
            if failed is None:
                self.queue.succeeded(key)
                if requeue is not None:
                    self.queue.add_after(key, requeue.delay_s, requeue.priority)
            elif failed.delay_s is not None:
                self.queue.add_after(key, failed.delay_s, LOW)
            else:
                delay = self.queue.retry(key, LOW)
                log.info("%s %s/%s: retried in %.1f s: %s", self.kind, *key, delay, failed)
