"""Event bodies: what `kubectl describe` shows about our objects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tramontane_operator.handlers.events import (
    MAX_MESSAGE,
    EventRecorder,
    event_body,
    object_reference,
)

NOW = datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC)


def test_an_event_refers_to_the_object_in_its_namespace() -> None:
    md = {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "u1", "labels": {"x": "y"}},
        "spec": {"big": "x" * 10_000},
    }
    body = event_body(object_reference(md), "Normal", "Created", "RayService chat created", NOW)
    assert body["metadata"] == {"generateName": "chat.", "namespace": "team-a"}
    assert body["involvedObject"] == {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": "chat",
        "namespace": "team-a",
        "uid": "u1",
    }
    assert (body["type"], body["reason"], body["count"]) == ("Normal", "Created", 1)
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-11-27T01:02:03Z"


def test_a_cluster_scoped_object_gets_its_events_in_default_and_long_messages_are_cut() -> None:
    cc = {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ComputeCluster"}
    cc["metadata"] = {"name": "aks", "uid": "u2"}
    body = event_body(object_reference(cc), "Warning", "Unreachable", "e" * 5000, NOW)
    assert body["metadata"]["namespace"] == "default"
    assert "namespace" not in body["involvedObject"]  # not an empty or null field
    assert len(body["message"]) == MAX_MESSAGE


class _Recording:
    """Stands in for the hub client: records what the recorder creates, and when."""

    def __init__(self) -> None:
        self.created: list[tuple[float, dict[str, object]]] = []

    async def create(self, _ref: object, body: dict[str, object]) -> dict[str, object]:
        self.created.append((asyncio.get_running_loop().time(), body))
        return body


async def test_events_wait_while_reconciles_do_and_at_most_max_hold() -> None:
    client = _Recording()
    busy = True
    recorder = EventRecorder(client, busy=lambda: busy, max_hold_s=10.0)  # type: ignore[arg-type]
    recorder.start()
    md = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "namespace": "n"}}
    recorder.post(md, "Normal", "Created", "m")
    await asyncio.sleep(0.2)
    assert client.created == []  # held while busy
    busy = False
    await asyncio.sleep(0.2)
    assert [b["reason"] for _, b in client.created] == ["Created"]
    await recorder.stop()

    stuck = EventRecorder(client, busy=lambda: True, max_hold_s=0.1)  # type: ignore[arg-type]
    stuck.start()
    start = asyncio.get_running_loop().time()
    stuck.post(md, "Warning", "Late", "m")
    await stuck.stop(flush_s=2.0)  # posted once held for max_hold_s, not lost
    assert client.created[-1][1]["reason"] == "Late"
    assert client.created[-1][0] - start >= 0.1
