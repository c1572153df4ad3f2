"""The informer against a scripted API server (resuming a watch the server ended, listing
again after 410 Gone), and its write-through without ordering resourceVersions: a write's
version marks the key pending until the watch delivers that very version.

Versions here are opaque tokens, neither numeric nor increasing, as the API allows them to be.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp.web
import pytest

from operator_harness import eventually
from tramontane_kube import RAYSERVICE, ClusterConfig, KubeClient
from tramontane_kube.informer import Informer
from tramontane_local.kube_history import gone

PATH = "/apis/ray.io/v1/rayservices"
LISTED = "Qx7a"  # the list's version
EVENTS = ["kP2w", "a9Zq", "Mm3r", "c0de", "Zz1b", "b7Tt"]  # each watch's one event, in order


def _rs(name: str, version: str, uid: str = "u1", **status: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "resourceVersion": version, "uid": uid}
    return {"metadata": meta, **({"status": status} if status else {})}


class ScriptedServer:
    """Lists object `a`; each watch sends one object at the next of `EVENTS`, then ends (as a
    server does at its timeout), after longer than the informer's at-once guard. A watch
    numbered in `gone_at` instead waits for `release`, then streams 410 Gone."""

    def __init__(self, gone_at: frozenset[int] = frozenset()) -> None:
        self.lists = 0
        self.watch_versions: list[str | None] = []
        self.gone_at = gone_at
        self.release = asyncio.Event()

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if request.query.get("watch") != "true":
            self.lists += 1
            body = {"metadata": {"resourceVersion": LISTED}, "items": [_rs("a", LISTED)]}
            return aiohttp.web.json_response(body)
        self.watch_versions.append(request.query.get("resourceVersion"))
        n = len(self.watch_versions)
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        if n in self.gone_at:
            await self.release.wait()
            await response.write(json.dumps(gone(str(self.watch_versions[-1]))).encode() + b"\n")
            return response
        event = {"type": "ADDED", "object": _rs(f"b{n}", EVENTS[n - 1])}
        await response.write(json.dumps(event).encode() + b"\n")
        await asyncio.sleep(1.2)
        return response


async def _serve(scripted: ScriptedServer) -> AsyncIterator[str]:
    app = aiohttp.web.Application()
    app.router.add_get(PATH, scripted.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer()
    async for url in _serve(scripted):
        yield scripted, url


@pytest.fixture
async def gone_server() -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer(gone_at=frozenset({1}))
    async for url in _serve(scripted):
        yield scripted, url


async def test_a_watch_the_server_ends_resumes_from_the_last_version_without_listing(
    server: tuple[ScriptedServer, str],
) -> None:
    scripted, url = server
    client = KubeClient("scripted", ClusterConfig(server=url))
    seen: list[str] = []
    informer = Informer(client, RAYSERVICE, {}, lambda _, obj: seen.append(obj["metadata"]["name"]))
    informer.start()
    try:
        await eventually(lambda: len(scripted.watch_versions) >= 3, timeout_s=10)
    finally:
        await informer.stop()
        await client.close()
    assert scripted.lists == 1
    assert scripted.watch_versions[:3] == [LISTED, EVENTS[0], EVENTS[1]]  # passed back verbatim
    assert seen[:3] == ["a", "b1", "b2"]


async def test_a_410_gone_lists_again_and_the_list_ends_every_pending_write(
    gone_server: tuple[ScriptedServer, str],
) -> None:
    scripted, url = gone_server
    client = KubeClient("scripted", ClusterConfig(server=url))
    informer = Informer(client, RAYSERVICE, {}, lambda _, obj: None, pending_ttl_s=60)
    informer.start()
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        informer.remember(_rs("a", "mine"))  # its event will never come: the watch is gone
        assert informer.get("ns", "a") == _rs("a", "mine")
        scripted.release.set()
        await eventually(lambda: scripted.lists >= 2, timeout_s=10)
        await eventually(lambda: informer.get("ns", "a") == _rs("a", LISTED), timeout_s=5)
        # The list is the truth and nothing is pending: the next watch's events apply.
        await eventually(lambda: informer.get("ns", "b2") is not None, timeout_s=10)
    finally:
        await informer.stop()
        await client.close()


# ------------------------------------------------- write-through, events fed by hand
class Fed:
    """An informer whose watch events the test feeds; `told` is what on_event received."""

    def __init__(self, pending_ttl_s: float = 60.0) -> None:
        self.told: list[dict[str, Any]] = []
        client: Any = SimpleNamespace(name="fed")
        self.informer = Informer(
            client, RAYSERVICE, {}, lambda _, o: self.told.append(dict(o)),
            pending_ttl_s=pending_ttl_s,
        )  # fmt: skip

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        self.informer._apply({"type": kind, "object": obj})

    def cached(self) -> dict[str, Any] | None:
        return self.informer.get("ns", "a")


async def test_events_older_than_our_write_are_skipped_until_its_own_event() -> None:
    fed = Fed()
    fed.event("ADDED", _rs("a", "x1"))
    mine = _rs("a", "m9", spec=2)
    assert fed.informer.remember(mine) == mine
    fed.event("MODIFIED", _rs("a", "x2", phase="old"))  # before our write: skipped
    assert fed.cached() == mine
    fed.event("MODIFIED", mine)  # our write's own event: pending ends, nothing new to tell
    assert fed.cached() == mine and fed.told == [_rs("a", "x1")]
    later = _rs("a", "k3", phase="ready")  # KubeRay after our write: applied
    fed.event("MODIFIED", later)
    assert fed.cached() == later and fed.told[-1] == later


async def test_a_write_whose_event_came_first_does_not_replace_newer_state() -> None:
    fed = Fed()
    mine, later = _rs("a", "m9"), _rs("a", "k3", phase="ready")
    fed.event("ADDED", mine)  # the watch delivered our write before its response came...
    fed.event("MODIFIED", later)  # ...and KubeRay's update after it
    assert fed.informer.remember(mine) == later
    fed.event("MODIFIED", _rs("a", "p4", phase="next"))  # nothing pending: applied
    assert fed.cached() == _rs("a", "p4", phase="next")


async def test_the_same_write_remembered_again_keeps_its_deadline() -> None:
    fed = Fed(pending_ttl_s=0.2)
    fed.event("ADDED", _rs("a", "x1"))
    mine = _rs("a", "m9")
    fed.informer.remember(mine)
    await asyncio.sleep(0.12)
    assert fed.informer.remember(mine) == mine  # an unchanged apply returns the cached write
    await asyncio.sleep(0.12)  # past the first deadline: the mark lapsed
    assert fed.cached() == _rs("a", "x1")


async def test_a_deletion_of_our_object_ends_pending_and_applies() -> None:
    fed = Fed()
    fed.informer.remember(_rs("a", "m9"))
    fed.event("DELETED", _rs("a", "d5"))
    assert fed.cached() is None and fed.told == [_rs("a", "d5")]
    fed.event("ADDED", _rs("a", "n6", uid="u2"))  # nothing pending any more: applied
    assert fed.cached() == _rs("a", "n6", uid="u2")


async def test_a_deletion_of_an_earlier_object_of_that_name_is_older_than_our_create() -> None:
    fed = Fed()
    fed.event("ADDED", _rs("a", "x1", uid="old"))
    mine = _rs("a", "m9", uid="new")
    fed.informer.remember(mine)
    fed.event("DELETED", _rs("a", "d5", uid="old"))  # the watch has not reached our create
    assert fed.cached() == mine
    fed.event("ADDED", mine)
    assert fed.cached() == mine


async def test_a_write_whose_event_never_comes_lapses_to_what_the_stream_showed() -> None:
    # A relist whose snapshot already held a later state, remembered only afterwards: the
    # watch starts past our write and never delivers it.
    fed = Fed(pending_ttl_s=0.1)
    snapshot = _rs("a", "s8", phase="ready")
    fed.event("ADDED", snapshot)
    fed.informer.remember(_rs("a", "m9"))
    newer = _rs("a", "t2", phase="serving")
    fed.event("MODIFIED", newer)  # skipped while pending, kept as the stream's state
    assert fed.cached() == _rs("a", "m9")
    await eventually(lambda: fed.cached() == newer, timeout_s=2)
    assert fed.told[-1] == newer  # the owner is woken to see it


async def test_forget_ends_pending() -> None:
    fed = Fed()
    fed.informer.remember(_rs("a", "m9"))
    fed.informer.forget("ns", "a")
    fed.event("ADDED", _rs("a", "n6"))
    assert fed.cached() == _rs("a", "n6")
