"""Kubernetes Events about our objects, posted in the background through the hub client.

Reconciles never wait on an Event: `EventRecorder.post` queues it and one poster task writes
it (client-go's recorder and Kopf's do the same). While new or changed ModelDeployments wait
for a reconcile, the poster holds back (up to a few seconds per Event), so in a burst Events
trail behind the reconciles instead of competing with them for the API server. Events are
best effort: one the API refuses is logged and dropped, and when the queue is full (the hub
is slow, a burst of objects) the newest are dropped with a warning rather than holding
memory. An Event only needs the object's reference (apiVersion, kind, name, namespace, uid),
so that is all that is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from tramontane_api.v1alpha1.common import Resource
from tramontane_kube import EVENT, ApiError, KubeClient, Unreachable

log = logging.getLogger(__name__)

MAX_MESSAGE: int = 1024
COMPONENT = "tramontane-operator"
HOLD_POLL_S = 0.05


def object_reference(obj: Resource | Mapping[str, Any]) -> dict[str, Any]:
    """apiVersion, kind, name, namespace and uid of a resource (model or raw body)."""
    if isinstance(obj, Resource):
        meta = obj.metadata
        return {
            "apiVersion": obj.api_version,
            "kind": obj.KIND_INFO.kind,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        }
    raw_meta: Mapping[str, Any] = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        **{k: raw_meta.get(k) for k in ("name", "namespace", "uid")},
    }


def event_body(
    ref: Mapping[str, Any], kind: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about the object `ref`; cluster-scoped objects' go to `default`."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {k: v for k, v in ref.items() if v is not None}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{ref.get('name') or 'object'}.",
            "namespace": ref.get("namespace") or "default",
        },
        "involvedObject": involved,
        "type": kind,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("HOSTNAME") or COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        posters: int = 1,
        max_queued: int = 10_000,
        busy: Callable[[], bool] | None = None,
        max_hold_s: float = 5.0,
    ) -> None:
        """`busy()`: whether reconciles are waiting; each Event is then held back (for at
        most `max_hold_s`, so Events are late under sustained load, never lost to it)."""
        self.client = client
        self.busy = busy
        self.max_hold_s = max_hold_s
        self.posters = posters
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queued)
        self._tasks: list[asyncio.Task[None]] = []
        self._dropped = 0

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._poster(), name=f"event poster {i}")
                for i in range(self.posters)
            ]

    async def stop(self, flush_s: float = 2.0) -> None:
        """Post what is queued (for at most `flush_s`), then stop the posters."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), flush_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def post(self, obj: Resource | Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """Queue an Event (`kind` Normal or Warning) about `obj`."""
        body = event_body(object_reference(obj), kind, reason, message, datetime.now(UTC))
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("Event queue full: %d Events dropped so far", self._dropped)

    async def _poster(self) -> None:
        while True:
            body = await self._queue.get()
            held = 0.0
            while self.busy is not None and self.busy() and held < self.max_hold_s:
                await asyncio.sleep(HOLD_POLL_S)
                held += HOLD_POLL_S
            try:
                await self.client.create(EVENT, body)
            except (ApiError, Unreachable) as exc:
                log.info("Event %s about %s not posted: %s", body["reason"], _name(body), exc)
            except Exception:
                log.exception("Event %s about %s not posted", body["reason"], _name(body))
            finally:
                self._queue.task_done()


def _name(body: Mapping[str, Any]) -> str:
    involved = body.get("involvedObject") or {}
    return f"{involved.get('kind')} {involved.get('namespace') or ''}/{involved.get('name')}"
