"""Opaque resourceVersions and watch history for the emulator, as an API server keeps them.

The Kubernetes API says a resourceVersion is opaque: clients may compare two for equality and
pass one back (to watch from it, or in a precondition), never parse or order them. So the
emulator hands out short random tokens (`fresh_version`: never all digits, never increasing)
and keeps the order itself: `Versions` maps each token to a sequence number, one sequence per
emulator (as etcd's revision is one per cluster). Each resource's event bus
(`RecordingBus`) records its events with their sequence numbers, a bounded history, so a
watch from a token replays what came after it; a token the history no longer reaches (or
never had) is answered 410 Gone, as a server answers a compacted revision. Every event's
object carries a version no earlier event used: a write's event carries the version its
response had; an event without a new one (a DELETED event) gets a fresh token, as on a
real server.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Mapping
from typing import Any

import attrs
from kmock._internal.aiobus import Bus

HISTORY = 5000  # events kept per resource; a watch from before them gets 410 Gone


def fresh_version(taken: Mapping[str, int] | set[str]) -> str:
    """A new opaque token: 8 URL-safe characters, unused, and never all digits (a client
    that calls int() on it fails at once rather than by chance)."""
    while True:
        token = secrets.token_urlsafe(6)
        if not token.isdigit() and token not in taken:
            return token


@attrs.define
class Versions:
    """Every version token handed out, with its place in the emulator's one sequence."""

    seq: int = 0
    order: dict[str, int] = attrs.field(factory=dict)  # token -> sequence number
    head: str = ""  # the token of the latest event: a list's metadata.resourceVersion

    def __attrs_post_init__(self) -> None:
        self.head = fresh_version(self.order)
        self.order[self.head] = 0

    def new(self) -> str:
        """A token for a write (`record` places it in the sequence when its event comes)."""
        return fresh_version(self.order)

    def record(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Place `event` next in the sequence; an event whose object carries a version
        already placed (or none) gets a copy of the object with a fresh one."""
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        token = meta.get("resourceVersion")
        if not isinstance(token, str) or not token or token in self.order:
            token = fresh_version(self.order)
            event = {**event, "object": {**obj, "metadata": {**meta, "resourceVersion": token}}}
        self.seq += 1
        self.order[token] = self.seq
        self.head = token
        return self.seq, event


@attrs.define(eq=False)
class RecordingBus(Bus[Any]):
    """KMock's event bus of one resource, keeping its last `HISTORY` events in order."""

    versions: Versions = attrs.field(kw_only=True)
    history: collections.deque[tuple[int, dict[str, Any]]] = attrs.field(
        kw_only=True, factory=lambda: collections.deque(maxlen=HISTORY)
    )
    forgotten: int = attrs.field(kw_only=True, default=0)  # the last sequence number dropped

    async def put(self, *items: Any) -> None:
        recorded = []
        for item in items:
            if isinstance(item, dict) and item.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                seq, item = self.versions.record(item)
                if len(self.history) == self.history.maxlen:
                    self.forgotten = self.history[0][0]
                self.history.append((seq, item))
            recorded.append(item)
        await super().put(*recorded)

    def since(self, token: str) -> list[dict[str, Any]] | None:
        """The events after version `token`, oldest first; None when the history does not
        reach back to it (too old, or a token this emulator never handed out)."""
        seq = self.versions.order.get(token)
        if seq is None or seq < self.forgotten:
            return None
        return [event for s, event in self.history if s > seq]


def gone(token: str) -> dict[str, Any]:
    """The ERROR event a server streams for a watch from a version it no longer has."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}
    message = f"too old resource version: {token}"
    return {"type": "ERROR", "object": {**status, "reason": "Expired", "message": message}}
