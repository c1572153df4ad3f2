"""Test harness for the operator tier: KMock API servers that behave like the real thing.

`ValidatingEmulator` is KMock's `KubernetesEmulator` plus what an API server does on writes and
the operator relies on: it fills `uid`, `creationTimestamp`, `resourceVersion` and
`generation` (bumped on spec changes), ignores `status` on the main resource and everything but
`status` on the `/status` subresource, and validates every created or patched object against
its CRD schema — ours from `crds/*.yaml`, KubeRay's from the v1.7.0 reference — plus metadata
names and labels. A write a real server would reject gets a 422 and is recorded in
`violations`, which each test asserts empty at the end.

`Cluster` runs one emulator behind a TCP port that can be stopped and restarted on the same
port (a member cluster going away and coming back). `FakeKubeRay` plays KubeRay's controller:
it moves each RayService's status to healthy with its workers ready. `OperatorRun` runs the
Kopf operator in-process as an asyncio task and can kill and restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.test_utils
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts
from tramontane_operator.api.schema import SchemaValidator

REPO_ROOT = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO_ROOT / "crds"
KUBERAY_CRDS_DIR = REPO_ROOT.parent / "shared" / "reference" / "kuberay-v1.7.0"

_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class CrdInfo:
    resource: kmock.resource
    info: kmock.ResourceInfo
    validator: SchemaValidator
    has_status: bool


def load_crds(paths: Iterable[Path]) -> list[CrdInfo]:
    out = []
    for path in sorted(paths):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        subresources = set((version.get("subresources") or {}).keys())
        out.append(
            CrdInfo(
                kmock.resource(crd["spec"]["group"], version["name"], names["plural"]),
                kmock.ResourceInfo(
                    kind=names["kind"],
                    singular=names.get("singular"),
                    namespaced=crd["spec"]["scope"] == "Namespaced",
                    shortnames=names.get("shortNames", []),
                    categories=names.get("categories", []),
                    subresources=subresources,
                    verbs=_VERBS,
                ),
                SchemaValidator(version["schema"]["openAPIV3Schema"]),
                "status" in subresources,
            )
        )
    return out


OUR_CRDS = load_crds(CRDS_DIR.glob("*.yaml"))
KUBERAY_CRDS = load_crds(KUBERAY_CRDS_DIR.glob("ray.io_*.yaml"))
CORE = {
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=_VERBS),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=_VERBS),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs=_VERBS),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=_VERBS
    ),
}


def metadata_problems(obj: Mapping[str, Any]) -> list[str]:
    """The API server's own checks on names and labels."""
    meta = obj.get("metadata") or {}
    problems = []
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _NAME.match(name):
        problems.append(f"metadata.name: invalid name {name!r}")
    for key, value in (meta.get("labels") or {}).items():
        label_name = key.rsplit("/", 1)[-1]
        if len(label_name) > 63 or not _LABEL_NAME.match(label_name):
            problems.append(f"metadata.labels: invalid key {key!r}")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"metadata.labels[{key}]: invalid value {value!r}")
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        missing = {"apiVersion", "kind", "name", "uid"} - set(ref)
        if missing:
            problems.append(f"metadata.ownerReferences[{index}]: missing {sorted(missing)}")
    return problems


@dataclass
class Fault:
    """Answer the next `times` requests matching `method` and `path` with HTTP `status`.

    With `stall` set, each matching request first waits for it (an operator can be killed
    while its request hangs), then fails.
    """

    method: str
    path: str  # a substring of the URL path
    status: int = 500
    times: int = 1
    stall: asyncio.Event | None = None
    hits: int = 0

    def matches(self, request: kmock.Request) -> bool:
        return (
            self.times > 0 and request.method.value == self.method and self.path in request.url.path
        )


_FAULT_REASONS = {409: "AlreadyExists", 500: "InternalError", 503: "ServiceUnavailable"}


@attrs.define(kw_only=True)
class ValidatingEmulator(kmock.KubernetesEmulator):
    """A KMock Kubernetes emulator that admits writes like a real API server."""

    cluster_name: str = "cluster"
    crds: list[CrdInfo] = attrs.field(factory=list)
    validate: bool = True
    violations: list[str] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    _counter: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in CORE.items():
            self.resources[key] = info
        for crd in self.crds:
            self.resources[crd.resource] = crd.info

    def _crd(self, resource: kmock.resource | None) -> CrdInfo | None:
        return next((c for c in self.crds if c.resource == resource), None)

    async def _handle(self, request: kmock.Request) -> Any:
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is not None:
            fault.times -= 1
            fault.hits += 1
            if fault.stall is not None:
                await fault.stall.wait()
            reason = _FAULT_REASONS.get(fault.status, "Injected")
            raise kmock.KubernetesError(fault.status, reason, f"injected fault: {reason}")
        if request.resource is not None and request.action in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
        ):
            self._admit(request)
        return await super()._handle(request)

    def _admit(self, request: kmock.Request) -> None:
        data = request.data
        crd = self._crd(request.resource)
        if request.action == kmock.action.CREATE:
            if not isinstance(data, dict):
                raise kmock.KubernetesError(400, "BadRequest", "body must be a JSON object")
            old, new = None, self._admit_create(request, data)
        else:
            if request.resource is None or request.name is None:
                return
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return  # KMock answers 404
            old = dict(self.objects[key].raw)
            status_only = request.subresource == "status"
            has_status = crd is not None and crd.has_status
            if isinstance(data, dict):
                new = self._admit_merge_patch(data, old, has_status, status_only)
            elif isinstance(data, list):
                new = self._admit_json_patch(data, old, has_status, status_only)
            else:
                raise kmock.KubernetesError(400, "BadRequest", "patch must be an object or a list")
        problems = metadata_problems(new)
        if crd is not None and self.validate:
            problems += [str(p) for p in crd.validator.validate(new, old)]
        if problems:
            what = f"{self.cluster_name}: {request.method.value} {request.url.path}"
            self.violations.extend(f"{what}: {p}" for p in problems)
            raise kmock.KubernetesError(422, "Invalid", "; ".join(problems))

    def _admit_create(self, request: kmock.Request, data: dict[str, Any]) -> dict[str, Any]:
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=str(next(self._counter)),
        )
        meta.pop("deletionTimestamp", None)
        return data

    def _admit_merge_patch(
        self, data: dict[str, Any], old: dict[str, Any], has_status: bool, status_only: bool
    ) -> dict[str, Any]:
        if has_status and status_only:
            for extra in [k for k in data if k != "status"]:
                del data[extra]
        elif has_status:
            data.pop("status", None)
        new = dict(kmock_dicts.patch_dict(old, data))
        meta = data.setdefault("metadata", {})
        new["metadata"] = dict(new.get("metadata") or {})
        meta["resourceVersion"] = new["metadata"]["resourceVersion"] = str(next(self._counter))
        if new.get("spec") != old.get("spec"):
            generation = int((old.get("metadata") or {}).get("generation") or 1) + 1
            meta["generation"] = new["metadata"]["generation"] = generation
        return new

    def _admit_json_patch(
        self, ops: list[Any], old: dict[str, Any], has_status: bool, status_only: bool
    ) -> dict[str, Any]:
        def on_status(op: Mapping[str, Any]) -> bool:
            return bool(op.get("path") == "/status" or str(op.get("path")).startswith("/status/"))

        if has_status:
            ops[:] = [op for op in ops if on_status(op) == status_only or op.get("op") == "test"]
        try:
            new = dict(kmock_dicts.patch_dict(old, ops))
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # e.g. Kopf's optimistic `test` of resourceVersion: a conflict, not a violation.
            raise kmock.KubernetesError(422, "Invalid", f"JSON patch failed: {exc}") from exc
        version = str(next(self._counter))
        ops.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        new["metadata"] = {**new.get("metadata", {}), "resourceVersion": version}
        if new.get("spec") != old.get("spec"):
            generation = int((old.get("metadata") or {}).get("generation") or 1) + 1
            ops.append({"op": "add", "path": "/metadata/generation", "value": generation})
            new["metadata"]["generation"] = generation
        return new

    def stored(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return dict(self.objects[key].raw)

    def stored_all(self, resource: str) -> list[dict[str, Any]]:
        res = kmock.resource(resource)
        return [dict(o.raw) for (r, _, _), o in self.objects.items() if r == res and not o.deleted]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    config = yaml.safe_load((rayservice.get("spec") or {}).get("serveConfigV2") or "") or {}
    return [str(a["name"]) for a in config.get("applications") or []]


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
