"""What makes the hub cache parse a ModelDeployment again (parsing is most of an event's cost)."""

from __future__ import annotations

import copy

from tramontane_operator.handlers.indexes import _changed_beyond_bookkeeping

MD = {
    "metadata": {"name": "chat", "namespace": "a", "resourceVersion": "5", "labels": {"x": "1"}},
    "spec": {"model": {"name": "m"}},
}


def _with(path: tuple[str, ...], value: object) -> dict[str, object]:
    obj = copy.deepcopy(MD)
    node = obj
    for part in path[:-1]:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[path[-1]] = value  # type: ignore[index]
    return obj


def test_a_finalizer_or_a_new_resource_version_alone_needs_no_parse() -> None:
    echo = _with(("metadata", "resourceVersion"), "6")
    echo["metadata"]["finalizers"] = ["tramontane.dev/cleanup"]  # type: ignore[index]
    assert not _changed_beyond_bookkeeping(MD, echo)


def test_spec_status_labels_and_deletion_are_parsed_again() -> None:
    for path, value in [
        (("spec", "model"), {"name": "other"}),
        (("status",), {"phase": "Ready"}),
        (("metadata", "labels"), {"x": "2"}),
        (("metadata", "deletionTimestamp"), "2026-11-27T00:00:00Z"),
    ]:
        assert _changed_beyond_bookkeeping(MD, _with(path, value)), path
