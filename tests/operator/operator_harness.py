"""Test harness for the operator tier: emulated clusters, a fake KubeRay, the operator.

`Cluster` is local mode's API server (`tramontane_local.apiserver.ApiServer`: one
`ValidatingEmulator` behind a TCP port that can be stopped and restarted on the same port, a
member cluster going away and coming back); `Clusters` is the hub plus members. `FakeKubeRay` plays KubeRay's controller: it moves each
RayService's status to healthy with its workers ready (or failed, per cluster). `OperatorRun`
(local mode's `OperatorThread`) runs the Kopf operator in a thread of this process and can
stop, kill and restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tramontane_local.apiserver import ApiServer
from tramontane_local.kube_emulator import kuberay_crds, our_crds
from tramontane_local.kuberay.status import app_names, rayservice_status, worker_replicas
from tramontane_local.operator_thread import OperatorThread

# One emulated cluster on a TCP port that survives stop()/start(): local mode's API server.
Cluster = ApiServer
__all__ = ["Cluster", "app_names", "worker_replicas"]


@dataclass
class Clusters:
    """The hub plus member clusters, all emulated."""

    hub: Cluster
    members: dict[str, Cluster]
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def all(self) -> list[Cluster]:
        return [self.hub, *self.members.values()]

    def __getitem__(self, name: str) -> Cluster:
        return self.hub if name == self.hub.name else self.members[name]

    def violations(self) -> list[str]:
        return [v for c in self.all for v in c.emulator.violations]

    @classmethod
    async def start(
        cls, hub: str, members: Iterable[str], *, validate: bool = True, kuberay_on_hub: bool = True
    ) -> Clusters:
        stack = contextlib.AsyncExitStack()
        made = []
        for name in [hub, *members]:
            crds = list(our_crds()) if name == hub else []
            if name != hub or kuberay_on_hub:
                crds += kuberay_crds()
            cluster = Cluster(name, crds=crds, validate=validate)
            await cluster.start()
            stack.push_async_callback(cluster.close)
            made.append(cluster)
        return cls(made[0], {c.name: c for c in made[1:]}, stack)

    async def close(self) -> None:
        await self._stack.aclose()


RAYSERVICES = "ray.io/v1/rayservices"
FAILED_MESSAGE = "replica crashed: CUDA out of memory"


def kuberay_status(rayservice: Mapping[str, Any], failed: bool) -> dict[str, Any]:
    """What KubeRay v1.7 reports for a RayService once its Ray cluster serves (or failed)."""
    return rayservice_status(rayservice, failed, FAILED_MESSAGE if failed else "")


class FakeKubeRay:
    """Moves every RayService's status along, as KubeRay's controller would (via the API)."""

    def __init__(self, clusters: Iterable[Cluster], interval_s: float = 0.1) -> None:
        self.clusters = list(clusters)
        self.interval_s = interval_s
        self.failing: set[str] = set()  # cluster names whose pools fail
        self.paused = False
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            if not self.paused:
                for cluster in self.clusters:
                    if cluster.up:
                        # The cluster may go down meanwhile: try again next round.
                        with contextlib.suppress(aiohttp.ClientError):
                            await self._sync(cluster)
            await asyncio.sleep(self.interval_s)

    async def _sync(self, cluster: Cluster) -> None:
        for rs in cluster.emulator.stored_all(RAYSERVICES):
            want = kuberay_status(rs, cluster.name in self.failing)
            if rs.get("status") == want:
                continue
            meta = rs["metadata"]
            url = f"{cluster.url}/apis/ray.io/v1/namespaces/{meta['namespace']}/rayservices/"
            async with self._session.patch(
                url + f"{meta['name']}/status",
                json={"status": want},
                headers={"Content-Type": "application/merge-patch+json"},
            ) as resp:
                await resp.read()


# The operator in a thread of this process: local mode's (see tramontane_local.operator_thread).
OperatorRun = OperatorThread


async def eventually(check: Any, timeout_s: float = 15.0, interval_s: float = 0.05) -> Any:
    """Poll `check()` (sync or async) until it returns a truthy value; fail with its last value."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last value: {last!r}")
        await asyncio.sleep(interval_s)
