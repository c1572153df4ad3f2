"""A list-then-watch cache of objects in one cluster: our children in each member, and the
hub objects reconciles read (the operator's `handlers/indexes.py`).

Reconciles read children from this cache instead of issuing a GET per cluster, and a change to
a child (KubeRay moving its status) wakes the owning ModelDeployment, so Ready follows KubeRay
without polling. The cache is written through by the reconciler after each create/patch/delete,
so a read right after a write never sees the older state. While the cluster cannot be reached,
the informer retries with capped exponential backoff and reports `synced = False`. A watch
the server ends is resumed from the last resourceVersion seen; only an error lists again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .client import ApiError, KubeClient, Unreachable
from .resources import ResourceRef

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
OnEvent = Callable[[str, Mapping[str, Any]], None]  # (cluster, object)


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
    ) -> None:
        self.client = client
        self.ref = ref
        self.namespace = namespace  # None: every namespace (or a cluster-scoped kind)
        self.labels = dict(labels)
        self.on_event = on_event
        self.max_backoff_s = max_backoff_s
        self.watch_timeout_s = watch_timeout_s
        self.items: dict[Key, dict[str, Any]] = {}
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

        A watch event newer than our write (KubeRay updating the status) may have arrived
        before the write's response: a response older than the cache does not replace it.
        """
        key = _key(obj)
        cached = self.items.get(key)
        if cached is not None and _newer(cached, obj):
            return cached
        self.items[key] = dict(obj)
        return self.items[key]

    def forget(self, namespace: str, name: str) -> None:
        self.items.pop((namespace, name), None)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                items, version = await self.client.list(self.ref, self.namespace, self.labels)
                fresh = {_key(i): i for i in items}
                changed = [o for k, o in fresh.items() if self.items.get(k) != o]
                gone = [o for k, o in self.items.items() if k not in fresh]
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
        if kind == "DELETED":
            if self.items.pop(key, None) is None:
                return
        else:
            cached = self.items.get(key)
            if cached == obj or (cached is not None and _newer(cached, obj)):
                return  # our own write, already remembered (or a newer one)
            self.items[key] = dict(obj)
        self.on_event(self.client.name, obj)


def _version(event: Mapping[str, Any]) -> str | None:
    version = ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def _newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether `a` is a later version than `b` (resourceVersions are etcd revisions)."""
    va = str((a.get("metadata") or {}).get("resourceVersion") or "")
    vb = str((b.get("metadata") or {}).get("resourceVersion") or "")
    return va.isdigit() and vb.isdigit() and int(va) > int(vb)


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta["name"])
