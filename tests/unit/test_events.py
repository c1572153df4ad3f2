"""Event bodies: what `kubectl describe` shows about our objects."""

from __future__ import annotations

from datetime import UTC, datetime

from tramontane_operator.handlers.events import MAX_MESSAGE, event_body, object_reference

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
