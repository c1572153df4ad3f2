"""A list-then-watch cache of objects in one cluster: our children in each member, and the
hub objects reconciles read (the operator's `handlers/indexes.py`).

Reconciles read children from this cache instead of issuing a GET per cluster, and a change to
a child (KubeRay moving its status) wakes the owning ModelDeployment, so Ready follows KubeRay
without polling. The cache is written through by the reconciler after each create/patch/delete,
so a read right after a write never sees the older state. While the cluster cannot be reached,
the informer retries with capped exponential backoff and reports `synced = False`. A watch
the server ends is resumed from the last resourceVersion seen; only an error lists again.

resourceVersions are opaque (the API allows comparing two for equality, never ordering them),
so write-through works without comparing versions; the watch's own order does it instead.
`remember` of our write's response at version V for key K marks K pending on V: watch events for
K with another version are then older than our write (the watch delivers a key's events in
order, and ours is still to come) and are skipped — kept aside as the latest state the stream
showed — until the event with version V arrives (it is our write: pending ends) or a DELETED
event of the same object (pending ends, the deletion applies). A relist (after an error or
410 Gone) ends every pending mark: the list is the truth. A write whose event the stream has
already delivered (it raced ahead of the response) is not marked: the cache has it, or newer.

Resuming a watch the server ended keeps the marks: a watch from the last version seen delivers
every later event, ours included, so ending them there would let older events overwrite our
write. The one case where V never arrives is a stream that starts past our write without
having shown it: a relist whose snapshot already holds a later state than V, when the response
is remembered only after that list (a snapshot coalesces history; opaque versions cannot tell
which of V and the snapshot's state is newer). So each mark also lapses after
`pending_ttl_s` (client-go's ControllerExpectations lapse after a TTL for the same reason):
the key then falls back to the latest state the stream showed, and `on_event` is told.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .client import ApiError, KubeClient, Unreachable
from .resources import ResourceRef

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
OnEvent = Callable[[str, Mapping[str, Any]], None]  # (cluster, object)
_SEEN = 8  # versions of each key the stream showed, remembered to spot a write it delivered


@dataclass
class _Pending:
    """Our write at `version`, whose watch event is still to come."""

    version: str
    uid: str | None
    deadline: float  # time.monotonic() at which the mark lapses
    stream: dict[str, Any] | None  # the latest state the stream showed meanwhile (None: none)
    timer: asyncio.TimerHandle | None = None


_NONE = _Pending("", None, 0.0, None)


class Informer:
    """Caches the objects of `ref` carrying `labels` in one cluster (or one namespace of it);
    calls `on_event` per change, after the cache has it (`get` is None once deleted)."""

    def __init__(
        self,
        client: KubeClient,
        ref: ResourceRef,
        labels: Mapping[str, str],
        on_event: OnEvent,
        *,
        namespace: str | None = None,
        max_backoff_s: float = 30.0,
        watch_timeout_s: int = 300,
        pending_ttl_s: float = 10.0,
    ) -> None:
        self.client = client
        self.ref = ref
        self.namespace = namespace  # None: every namespace (or a cluster-scoped kind)
        self.labels = dict(labels)
        self.on_event = on_event
        self.max_backoff_s = max_backoff_s
        self.watch_timeout_s = watch_timeout_s
        self.pending_ttl_s = pending_ttl_s
        self.items: dict[Key, dict[str, Any]] = {}
        self._pending: dict[Key, _Pending] = {}
        self._seen: dict[Key, collections.deque[str]] = {}
        self.synced = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            name = f"informer:{self.client.name}/{self.ref.plural}"
            self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for key in list(self._pending):  # no lapse may tell on_event after the stop
            self._end_pending(key)

    def retry_now(self) -> None:
        """Cut a retry backoff short (the cluster is known to answer again)."""
        self._poke.set()

    async def _backoff(self, delay: float) -> None:
        self._poke.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poke.wait(), delay)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.items.get((namespace, name))

    def remember(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Write-through after our own create/patch; returns the newest known state.

        Until the watch delivers our write, older events of the object are skipped (see the
        module docstring). A response whose event the watch already delivered (it raced ahead,
        maybe followed by KubeRay updating the status) does not replace the cache.
        """
        key, version = _key(obj), _version_of(obj)
        cached = self.items.get(key)
        if version and cached is not None and version in self._seen.get(key, ()):
            return cached
        if version and cached is not None and self._pending.get(key, _NONE).version == version:
            return cached  # the same write again (nothing to patch): its mark keeps its deadline
        before = self._end_pending(key)
        if version:
            stream = before.stream if before is not None else cached
            pending = _Pending(version, _uid(obj), time.monotonic() + self.pending_ttl_s, stream)
            with contextlib.suppress(RuntimeError):  # no running loop: lapses at the next event
                loop = asyncio.get_running_loop()
                pending.timer = loop.call_later(self.pending_ttl_s, self._lapse, key, pending)
            self._pending[key] = pending
        self.items[key] = dict(obj)
        return self.items[key]

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self.items.pop(key, None)
        self._seen.pop(key, None)
        self._end_pending(key)

    def _end_pending(self, key: Key) -> _Pending | None:
        pending = self._pending.pop(key, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        return pending

    def _lapse(self, key: Key, pending: _Pending) -> None:
        """Our write's event did not come in time: take the latest state the stream showed."""
        if self._pending.get(key) is not pending:
            return
        self._end_pending(key)
        log.debug("informer %s: %s/%s: our write's event did not come", self.client.name, *key)
        if pending.stream is not None and self.items.get(key) != pending.stream:
            self.items[key] = pending.stream
            self.on_event(self.client.name, pending.stream)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                items, version = await self.client.list(self.ref, self.namespace, self.labels)
                fresh = {_key(i): i for i in items}
                changed = [o for k, o in fresh.items() if self.items.get(k) != o]
                gone = [o for k, o in self.items.items() if k not in fresh]
                for key in list(self._pending):  # the list is the truth: no write is pending
                    self._end_pending(key)
                self._seen = {}
                for key, obj in fresh.items():
                    self._saw(key, obj)
                self.items = fresh
                self.synced.set()
                for obj in changed + gone:
                    self.on_event(self.client.name, obj)
                delay = 0.2
                # The server ends each watch after its timeout: watch again from the last
                # version seen, as client-go does, rather than list everything again. A
                # version too old for the server is an error (410 Gone): list again then.
                loop = asyncio.get_running_loop()
                while True:
                    started = loop.time()
                    async for event in self.client.watch(
                        self.ref,
                        self.namespace,
                        labels=self.labels,
                        resource_version=version,
                        timeout_s=self.watch_timeout_s,
                    ):
                        self._apply(event)
                        version = _version(event) or version
                    if loop.time() - started < 1.0:  # ended at once: list again, after a pause
                        await self._backoff(delay)
                        break
            except asyncio.CancelledError:
                raise
            except (Unreachable, ApiError) as exc:
                self.synced.clear()
                log.debug("informer %s: %s; retrying in %.1fs", self.client.name, exc, delay)
                await self._backoff(delay)
                delay = min(delay * 2, self.max_backoff_s)
            except Exception:  # a bug must not end the informer silently
                self.synced.clear()
                log.exception("informer %s failed; restarting", self.client.name)
                await self._backoff(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "BOOKMARK" or not obj.get("metadata"):
            return
        key = _key(obj)
        pending = self._pending.get(key)
        if kind == "DELETED":
            if pending is not None and pending.uid and _uid(obj) not in (None, pending.uid):
                pending.stream = None  # an earlier object of that name, gone before our create
                return
            self._end_pending(key)
            self._seen.pop(key, None)
            if self.items.pop(key, None) is None:
                return
            self.on_event(self.client.name, obj)
            return
        self._saw(key, obj)
        if pending is not None:
            if _version_of(obj) != pending.version and time.monotonic() < pending.deadline:
                pending.stream = dict(obj)  # it predates our write, whose event is to come
                return
            self._end_pending(key)
        if self.items.get(key) == obj:
            return  # our own write, already remembered
        self.items[key] = dict(obj)
        self.on_event(self.client.name, obj)

    def _saw(self, key: Key, obj: Mapping[str, Any]) -> None:
        version = _version_of(obj)
        if version:
            self._seen.setdefault(key, collections.deque(maxlen=_SEEN)).append(version)


def _version(event: Mapping[str, Any]) -> str | None:
    return _version_of(event.get("object") or {})


def _version_of(obj: Mapping[str, Any]) -> str | None:
    """The object's resourceVersion: an opaque token, compared for equality only."""
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def _uid(obj: Mapping[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta["name"])
