"""Test harness for the operator tier: emulated clusters, a fake KubeRay, the operator.

`Cluster` runs one `ValidatingEmulator` (see `kube_emulator`) behind a TCP port that can be
stopped and restarted on the same port (a member cluster going away and coming back);
`Clusters` is the hub plus members. `FakeKubeRay` plays KubeRay's controller: it moves each
RayService's status to healthy with its workers ready (or failed, per cluster). `OperatorRun`
runs the Kopf operator in a thread of this process and can stop, kill and restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.test_utils
import yaml

from kube_emulator import KUBERAY_CRDS, OUR_CRDS, YAML_LOADER, ValidatingEmulator


@dataclass
class Cluster:
    """One emulated cluster on a TCP port that survives stop()/start()."""

    name: str
    emulator: ValidatingEmulator
    port: int = 0
    _server: aiohttp.test_utils.RawTestServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        # aiohttp's raw server, not kmock.Server: that one also patches aiohttp's resolver
        # process-wide and cannot be stopped out of order.
        server = aiohttp.test_utils.RawTestServer(self.emulator, host="127.0.0.1", port=self.port)
        await server.start_server()
        # Open watch streams would hold a graceful shutdown for 60 s: drop them like a crash.
        if server.runner is not None:
            server.runner._shutdown_timeout = 0.1
        self._server, self.port = server, int(server.port or 0)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.close()

    def kubeconfig(self) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": self.name,
                "clusters": [{"name": self.name, "cluster": {"server": self.url}}],
                "users": [{"name": self.name, "user": {"token": f"token-{self.name}"}}],
                "contexts": [
                    {"name": self.name, "context": {"cluster": self.name, "user": self.name}}
                ],
            }
        )


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
            crds = list(OUR_CRDS) if name == hub else []
            if name != hub or kuberay_on_hub:
                crds += KUBERAY_CRDS
            emulator = ValidatingEmulator(cluster_name=name, crds=crds, validate=validate)
            await stack.enter_async_context(emulator)
            cluster = Cluster(name, emulator)
            await cluster.start()
            stack.push_async_callback(cluster.stop)
            made.append(cluster)
        return cls(made[0], {c.name: c for c in made[1:]}, stack)

    async def close(self) -> None:
        await self._stack.aclose()


RAYSERVICES = "ray.io/v1/rayservices"


def app_names(rayservice: Mapping[str, Any]) -> list[str]:
    return list(_app_names((rayservice.get("spec") or {}).get("serveConfigV2") or ""))


@functools.lru_cache(maxsize=4096)
def _app_names(serve_config: str) -> tuple[str, ...]:
    # Parsed once per distinct config, with libyaml: the fake controller re-reads every
    # RayService each round, and pure-Python YAML parsing there starved the emulators
    # sharing its process (40% of the benchmark process's CPU at 500 ModelDeployments).
    config = yaml.load(serve_config, Loader=YAML_LOADER) or {}
    return tuple(str(a["name"]) for a in config.get("applications") or [])


def worker_replicas(rayservice: Mapping[str, Any]) -> int:
    groups = ((rayservice.get("spec") or {}).get("rayClusterConfig") or {}).get("workerGroupSpecs")
    return sum(int(g.get("replicas") or 0) for g in groups or [])


def kuberay_status(rayservice: Mapping[str, Any], failed: bool) -> dict[str, Any]:
    """What KubeRay v1.7 reports for a RayService once its Ray cluster serves (or failed)."""
    meta = rayservice["metadata"]
    workers = 0 if failed else worker_replicas(rayservice)
    app_status = (
        {"status": "DEPLOY_FAILED", "message": "replica crashed: CUDA out of memory"}
        if failed
        else {"status": "RUNNING"}
    )
    ready = {
        "type": "Ready",
        "status": "False" if failed else "True",
        "reason": "ZeroServeEndpoints" if failed else "NonZeroServeEndpoints",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    return {
        "serviceStatus": "" if failed else "Running",
        "numServeEndpoints": workers,
        "observedGeneration": meta.get("generation", 1),
        "conditions": [ready],
        "activeServiceStatus": {
            "rayClusterName": f"{meta['name']}-raycluster",
            "applicationStatuses": {name: app_status for name in app_names(rayservice)},
            "rayClusterStatus": {
                "state": "failed" if failed else "ready",
                "desiredWorkerReplicas": worker_replicas(rayservice),
                "readyWorkerReplicas": workers,
                "availableWorkerReplicas": workers,
            },
        },
    }


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


class OperatorRun:
    """The operator in a thread of this process, with its own event loop.

    Kopf treats every task created after it starts as its own and cancels them all on exit,
    so it gets a loop of its own; the emulators and the test stay on the test's loop and talk
    to it over TCP, like a real deployment. `kill()` cancels it mid-flight, like a killed pod.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    async def start(self, ready_timeout_s: float = 20.0) -> None:
        self._ready.clear()
        self.error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)
        self._thread.start()
        ready = await asyncio.to_thread(self._ready.wait, ready_timeout_s)
        if self.error is not None:
            raise RuntimeError("the operator failed to start") from self.error
        if not ready:
            raise RuntimeError(f"the operator was not ready within {ready_timeout_s}s")

    def _main(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _run(self) -> None:
        import kopf

        from tramontane_operator.main import run

        kopf_settings = kopf.OperatorSettings()
        kopf_settings.watching.reconnect_backoff = 0.1
        kopf_settings.queueing.idle_timeout = 0.1
        kopf_settings.queueing.exit_timeout = 1.0
        self._stop, ready = asyncio.Event(), asyncio.Event()

        async def signal_ready() -> None:
            await ready.wait()
            self._ready.set()

        watcher = asyncio.create_task(signal_ready())
        self._task = asyncio.create_task(
            run(self.settings, stop_flag=self._stop, ready_flag=ready, kopf_settings=kopf_settings)
        )
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        finally:
            watcher.cancel()

    async def _finish(self, how: str) -> None:
        if self._thread is None or self._loop is None or self._loop.is_closed():
            return
        if how == "stop" and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        elif self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None

    async def stop(self) -> None:
        """Graceful stop (Kopf finishes the handlers in flight)."""
        await self._finish("stop")

    async def kill(self) -> None:
        """Abrupt stop: cancel everything mid-flight."""
        await self._finish("kill")


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
