"""The informer against a scripted API server: resuming a watch the server ended."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest

from operator_harness import eventually
from tramontane_kube import RAYSERVICE, ClusterConfig, KubeClient
from tramontane_kube.informer import Informer

PATH = "/apis/ray.io/v1/rayservices"


def _rs(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


class ScriptedServer:
    """Lists one object at version 5; each watch sends one newer object, then ends (as a
    server does at its timeout), after longer than the informer's at-once guard."""

    def __init__(self) -> None:
        self.lists = 0
        self.watch_versions: list[str | None] = []

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if request.query.get("watch") != "true":
            self.lists += 1
            body = {"metadata": {"resourceVersion": "5"}, "items": [_rs("a", "5")]}
            return aiohttp.web.json_response(body)
        self.watch_versions.append(request.query.get("resourceVersion"))
        n = len(self.watch_versions)
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        event = {"type": "ADDED", "object": _rs(f"b{n}", str(5 + n))}
        await response.write(json.dumps(event).encode() + b"\n")
        await asyncio.sleep(1.2)
        return response


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer()
    app = aiohttp.web.Application()
    app.router.add_get(PATH, scripted.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield scripted, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


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
    assert scripted.watch_versions[:3] == ["5", "6", "7"]
    assert seen[:3] == ["a", "b1", "b2"]
