"""The emulator's resourceVersions are opaque, as the Kubernetes API says they are: tokens
that are neither numbers nor increasing, for every write and for lists. So every operator and
router test runs against versions that only equality can use; a watch from one still replays
what came after it, and one the emulator never handed out is 410 Gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from operator_harness import Clusters
from tramontane_kube import RAYSERVICE, ApiError, ClusterConfig, KubeClient


@pytest.fixture
async def member() -> AsyncIterator[KubeClient]:
    clusters = await Clusters.start("hub", ["m"])
    client = KubeClient("m", ClusterConfig(server=clusters["m"].url), attempts=1)
    try:
        yield client
    finally:
        await client.close()
        await clusters.close()


def _rs(name: str) -> dict[str, Any]:
    group = {"rayStartParams": {}, "template": {"spec": {"containers": []}}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"rayClusterConfig": {"headGroupSpec": group}},
    }


def _version(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


async def _watch(client: KubeClient, since: str | None) -> list[tuple[str, str, str]]:
    """(type, name, version) of the events a 1 s watch from `since` streams."""
    out = []
    async for event in client.watch(RAYSERVICE, "ns", resource_version=since, timeout_s=1):
        obj = event["object"]
        out.append((event["type"], obj["metadata"]["name"], _version(obj)))
    return out


async def test_versions_are_opaque_tokens_for_writes_and_lists(member: KubeClient) -> None:
    versions = [_version(await member.create(RAYSERVICE, _rs(f"rs{i}"))) for i in range(5)]
    for i in range(5):
        patch = {"metadata": {"labels": {"n": str(i)}}}
        versions.append(_version(await member.patch(RAYSERVICE, "ns", "rs0", patch)))
    _, listed = await member.list(RAYSERVICE, "ns")
    assert listed is not None
    versions.append(listed)
    assert not any(v.isdigit() for v in versions), versions
    assert len(set(versions[:-1])) == len(versions) - 1  # one per write
    assert sorted(versions[:-1]) != versions[:-1]  # not increasing (10 random tokens)


async def test_a_watch_from_a_version_replays_what_came_after_it(member: KubeClient) -> None:
    first = await member.create(RAYSERVICE, _rs("a"))
    _, listed = await member.list(RAYSERVICE, "ns")
    patched = await member.patch(RAYSERVICE, "ns", "a", {"metadata": {"labels": {"x": "1"}}})
    second = await member.create(RAYSERVICE, _rs("b"))
    await member.delete(RAYSERVICE, "ns", "a")
    after_list = await _watch(member, listed)
    assert after_list[:2] == [
        ("MODIFIED", "a", _version(patched)),
        ("ADDED", "b", _version(second)),
    ]
    deleted = after_list[2]
    assert deleted[:2] == ("DELETED", "a") and deleted[2] not in (_version(patched), listed)
    assert await _watch(member, _version(first)) == after_list  # the list's version is its head
    assert await _watch(member, _version(second)) == [deleted]
    # Without a version: the objects there now, as ADDED.
    assert await _watch(member, None) == [("ADDED", "b", _version(second))]


async def test_a_watch_from_a_version_never_handed_out_is_gone(member: KubeClient) -> None:
    await member.create(RAYSERVICE, _rs("a"))
    with pytest.raises(ApiError) as gone:
        await asyncio.wait_for(_watch(member, "nOt-0urs"), 5)
    assert gone.value.status == 410
