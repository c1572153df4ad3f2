"""A KMock Kubernetes emulator that admits writes like a real API server, and answers fast.

`ValidatingEmulator` is KMock's `KubernetesEmulator` plus what an API server does on writes and
the operator relies on: it fills `uid`, `creationTimestamp`, `resourceVersion` and
`generation` (bumped on spec changes), honours `generateName`, ignores `status` on the main
resource and everything but `status` on the `/status` subresource (merge and JSON patches),
serves PUT (replace) with the `metadata.resourceVersion` precondition (409 when stale),
records every request's RBAC attributes by User-Agent while a test tier asks (`kube_access`),
and validates every created or patched object against its CRD schema — ours generated from the
API models (what `crds/*.yaml` holds), KubeRay's v1.7.0 RayJob and RayService CRDs shipped in
`kuberay_crds/` — plus metadata names and labels. A write a real server would reject gets a
422 and is recorded in `violations` (tests assert it empty at the end). `faults` inject HTTP
errors (and stalls) on chosen requests. A pod's log (`GET .../pods/NAME/log`, with `tailLines`,
`limitBytes` and `follow`) is the text stored in `pod_logs[(namespace, name)]`, or else the file
`pod_log_files[(namespace, name)]` names (local mode's RayJob submitter pods, whose processes
write there: see `kuberay.controller`). It is local
mode's API server (`apiserver.ApiServer`) and the operator test tier's, and it answers plain
`kubectl` (lists carry their kind, discovery is a real server's shape, `/openapi/v3` declares
server-side field validation: see `openapi`); protobuf bodies get a 415 saying so.

resourceVersions are opaque tokens, not counters, and a watch from one replays the events after
it (or answers 410 Gone): see `kube_history`.

Plain create/get/list/patch/delete are served directly from the object store (O(1) lookups,
equality label selectors); KMock's reaction DSL, which costs ~45 ms per request on
RayService-sized bodies, only serves watches and discovery.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts
from kmock._internal.k8s import (
    KubernetesObjectConflictError,
    KubernetesObjectNotFoundError,
    KubernetesResourceNotFoundError,
)

from tramontane_api.crdgen import crd_for
from tramontane_api.schema import SchemaValidator
from tramontane_api.v1alpha1 import KINDS

from . import openapi
from .kube_access import RECORDER
from .kube_history import RecordingBus, Versions, gone

# KubeRay v1.7.0's RayJob and RayService CRDs, copied unchanged from the kuberay-operator Helm
# chart (helm-chart/kuberay-operator/crds/ at tag v1.7.0; Apache License 2.0): see
# kuberay_crds/README.md.
KUBERAY_CRD_FILES = ("ray.io_rayjobs.yaml", "ray.io_rayservices.yaml")

# libyaml where installed: the KubeRay CRDs are megabytes of YAML.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class CrdInfo:
    """What the emulator serves of one CRD: its resource, discovery info and schema."""

    resource: kmock.resource
    info: kmock.ResourceInfo
    validator: SchemaValidator
    has_status: bool


def crd_info(crd: Mapping[str, Any]) -> CrdInfo:
    """The emulator's view of one CustomResourceDefinition (its storage version)."""
    names = crd["spec"]["names"]
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    subresources = set((version.get("subresources") or {}).keys())
    return CrdInfo(
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


def load_crds(paths: Iterable[Path]) -> list[CrdInfo]:
    """The CRDs in these YAML files, in file name order."""
    return [crd_info(yaml.load(p.read_text(), Loader=YAML_LOADER)) for p in sorted(paths)]


@functools.cache
def our_crds() -> tuple[CrdInfo, ...]:
    """Tramontane's CRDs, generated from the API models (what `crds/*.yaml` holds)."""
    return tuple(crd_info(crd_for(kind)) for kind in KINDS)


@functools.cache
def kuberay_crds() -> tuple[CrdInfo, ...]:
    """KubeRay v1.7.0's RayJob and RayService CRDs, from this package's data."""
    files = resources.files("tramontane_local").joinpath("kuberay_crds")
    return tuple(
        crd_info(yaml.load(files.joinpath(name).read_text(), Loader=YAML_LOADER))
        for name in KUBERAY_CRD_FILES
    )


CORE = {
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=_VERBS),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=_VERBS),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs=_VERBS),
    "v1/pods": kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=_VERBS),
    "batch/v1/jobs": kmock.ResourceInfo(kind="Job", namespaced=True, verbs=_VERBS),
    "coordination.k8s.io/v1/leases": kmock.ResourceInfo(
        kind="Lease", namespaced=True, verbs=_VERBS
    ),
    # The chart's ValidatingWebhookConfiguration, whose caBundle the operator's leader keeps.
    "admissionregistration.k8s.io/v1/validatingwebhookconfigurations": kmock.ResourceInfo(
        kind="ValidatingWebhookConfiguration", namespaced=False, verbs=_VERBS
    ),
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
    hit_times: list[float] = field(default_factory=list)  # time.monotonic() of each hit

    def matches(self, request: kmock.Request) -> bool:
        return (
            self.times > 0 and request.method.value == self.method and self.path in request.url.path
        )


# KMock 0.8 reads /api/v1/namespaces/NAME as the start of a namespaced path, so Namespace
# objects are served here (create, get, list) before KMock sees the request.
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
_POD_LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def _status(code: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}  # fmt: skip
    return aiohttp.web.json_response(body, status=code)


def _pod_not_found(name: str) -> aiohttp.web.StreamResponse:
    return _status(404, "NotFound", f'pods "{name}" not found')


_POD_ENDED = frozenset({"Succeeded", "Failed"})
_FAULT_REASONS = {409: "AlreadyExists", 500: "InternalError", 503: "ServiceUnavailable"}


@attrs.define(kw_only=True)
class ValidatingEmulator(kmock.KubernetesEmulator):
    """A KMock Kubernetes emulator that admits writes like a real API server."""

    cluster_name: str = "cluster"
    crds: list[CrdInfo] = attrs.field(factory=list)
    validate: bool = True
    violations: list[str] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    # (plural, namespace, name) -> time.monotonic() of its creation, for benchmarks.
    created_at: dict[tuple[str, str | None, str], float] = attrs.field(factory=dict)
    namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)  # (namespace, pod) -> log
    pod_log_files: dict[tuple[str, str], Path] = attrs.field(factory=dict)  # ... -> log file
    _versions: Versions = attrs.field(factory=Versions)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = collections.defaultdict(lambda: RecordingBus(versions=self._versions))
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
            fault.hit_times.append(time.monotonic())
            if fault.stall is not None:
                await fault.stall.wait()
            reason = _FAULT_REASONS.get(fault.status, "Injected")
            raise kmock.KubernetesError(fault.status, reason, f"injected fault: {reason}")
        if request.method.value == "PUT" and request.resource is not None and request.name:
            return await self._serve_replace(request)
        if request.resource is not None and request.action in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
        ):
            self._admit(request)
        if (
            (
                request.resource is not None
                and request.resource.plural
                and not request.params.get("watch")
            )
            and request.action in _FAST_ACTIONS
            and request.subresource in (None, "status")
        ):
            return await self._serve_fast(request)
        return await super()._handle(request)

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Who asked for what, as RBAC sees it (kube_access; only while a test tier records).
        if RECORDER.enabled:
            writes = raw.method in ("POST", "PUT", "PATCH") and raw.body_exists
            RECORDER.record(
                self.cluster_name,
                raw.headers.get("User-Agent", ""),
                raw.method,
                raw.path,
                raw.query,
                await raw.read() if writes else b"",  # aiohttp keeps it for the handler
                {
                    (c.resource.group or "", str(c.info.kind)): str(c.resource.plural)
                    for c in self.crds
                },
            )
        if raw.content_type == "application/vnd.kubernetes.protobuf" and raw.body_exists:
            return _status(
                415,
                "UnsupportedMediaType",
                "this emulated API server reads JSON bodies only, not protobuf (which kubectl "
                "sends for `kubectl create <built-in kind>`): write the object as YAML and "
                "`kubectl apply -f` it",
            )
        if raw.path == "/openapi/v3" or raw.path.startswith("/openapi/v3/"):
            return self._serve_openapi(raw.path)
        log_path = _POD_LOG_PATH.match(raw.path)
        if log_path is not None and raw.method == "GET":
            if raw.query.get("follow") in ("true", "1"):
                return await self._follow_pod_log(raw, log_path.group(1), log_path.group(2))
            return self._serve_pod_log(log_path.group(1), log_path.group(2), raw.query)
        namespace_path = _NAMESPACE_PATH.match(raw.path)
        if namespace_path is None:
            return await super().__call__(raw)
        if raw.query.get("watch") in ("true", "1") and raw.method == "GET":
            return await self._watch_namespaces(raw)
        data = await raw.json() if raw.body_exists else None
        return self._serve_namespace(raw.method, namespace_path.group(1), data)

    async def _watch_namespaces(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """A watch of Namespaces (Kopf's namespace observer, when it watches some namespaces):
        held open until its timeout with no events; no test changes namespaces meanwhile."""
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await asyncio.sleep(float(raw.query.get("timeoutSeconds") or 300))
        return response

    def _serve_pod_log(
        self, namespace: str, name: str, query: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        data = self._pod_log_bytes(namespace, name, query)
        if data is None:
            return _pod_not_found(name)
        return aiohttp.web.Response(body=data, content_type="text/plain")

    def _pod_log_bytes(self, namespace: str, name: str, query: Mapping[str, str]) -> bytes | None:
        """The pod's log as the kubelet serves it: the last `tailLines` lines, then cut to the
        first `limitBytes` bytes; None for a pod that does not exist."""
        if self.stored("v1/pods", namespace, name) is None:
            return None
        text = self._log_text(namespace, name)
        if "tailLines" in query:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - min(len(lines), int(query["tailLines"])) :])
        data = text.encode()
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"])]
        return data

    def _log_text(self, namespace: str, name: str) -> str:
        """The pod's log so far: stored text, else its log file's (empty when unreadable)."""
        key = (namespace, name)
        if key in self.pod_logs or key not in self.pod_log_files:
            return self.pod_logs.get(key, "")
        try:
            return self.pod_log_files[key].read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    async def _follow_pod_log(
        self, raw: aiohttp.web.BaseRequest, namespace: str, name: str
    ) -> aiohttp.web.StreamResponse:
        """`follow=true`, as the kubelet streams it: the tail, then what is appended, until the
        pod's phase is Succeeded or Failed (or the pod is gone)."""
        head = self._pod_log_bytes(namespace, name, raw.query)
        if head is None:
            return _pod_not_found(name)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await response.write(head)
            sent = len(self._log_text(namespace, name))
            while True:
                pod = self.stored("v1/pods", namespace, name)
                text = self._log_text(namespace, name)
                if len(text) > sent:
                    await response.write(text[sent:].encode())
                    sent = len(text)
                if pod is None or (pod.get("status") or {}).get("phase") in _POD_ENDED:
                    break
                await asyncio.sleep(0.1)
            await response.write_eof()
        return response

    def _serve_namespace(
        self, method: str, name: str | None, data: Any
    ) -> aiohttp.web.StreamResponse:
        def status(code: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
            return aiohttp.web.json_response(
                {**body, "reason": reason, "message": message}, status=code
            )

        if name is None and method == "GET":
            items = list(self.namespaces.values())
            meta = {"resourceVersion": self._versions.head}
            return aiohttp.web.json_response({"metadata": meta, "items": items})
        if name is None and method == "POST":
            data = data if isinstance(data, dict) else {}
            problems = metadata_problems(data)
            if problems:
                return status(422, "Invalid", "; ".join(problems))
            new = str(data["metadata"]["name"])
            if new in self.namespaces:
                return status(409, "AlreadyExists", f'namespaces "{new}" already exists')
            meta = {**data["metadata"], "uid": str(uuid.uuid4()), "creationTimestamp": _now()}
            meta["resourceVersion"] = self._versions.new()
            self.namespaces[new] = {**data, "metadata": meta, "status": {"phase": "Active"}}
            return aiohttp.web.json_response(self.namespaces[new], status=201)
        if name is not None and method == "GET":
            if name not in self.namespaces:
                return status(404, "NotFound", f'namespaces "{name}" not found')
            return aiohttp.web.json_response(self.namespaces[name])
        return status(405, "MethodNotAllowed", f"{method} on namespaces")

    def _served(self) -> list[openapi.Served]:
        """The kinds this server serves: the core ones and the CRDs'."""
        infos = [(kmock.resource(k), i) for k, i in CORE.items()]
        infos += [(c.resource, c.info) for c in self.crds]
        return [
            openapi.Served(r.group or "", r.version or "", r.plural, i.kind, bool(i.namespaced))
            for r, i in infos
            if r.plural and r.version and i.kind
        ]

    def _serve_openapi(self, path: str) -> aiohttp.web.StreamResponse:
        """`/openapi/v3` and its group/version documents (see `openapi`), so `kubectl apply`
        validates on this server instead of refusing to run."""
        docs = openapi.documents(self._served())
        if path == "/openapi/v3":
            return aiohttp.web.json_response(openapi.root(docs))
        doc = docs.get(path.removeprefix("/openapi/v3/"))
        if doc is None:
            return _status(404, "NotFound", f"no OpenAPI document at {path}")
        return aiohttp.web.json_response(doc)

    def _list_type(self, resource: kmock.resource) -> dict[str, str]:
        """`apiVersion` and `kind` (`<Kind>List`) of a list, as a real server sends them
        (kubectl refuses a list without them)."""
        for s in self._served():
            if (s.group, s.version, s.plural) == (
                resource.group or "",
                resource.version,
                resource.plural,
            ):
                group = f"{s.group}/" if s.group else ""
                return {"apiVersion": f"{group}{s.version}", "kind": f"{s.kind}List"}
        return {}

    async def _serve_version(self, request: Any) -> Any:
        """Discovery of one group/version as a real server answers it: the core group's
        `groupVersion` is `v1` (not `/v1`), and subresources (`modeldeployments/status`) carry
        no short names or categories and only their own verbs, so `kubectl get md`, `kubectl
        get tramontane` and `kubectl get secrets` find the resources themselves."""
        payload: Any = await super()._serve_version(request)
        payload["groupVersion"] = str(payload.get("groupVersion") or "").lstrip("/")  # core: v1
        for entry in payload.get("resources") or []:
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], singularName="")
                entry["verbs"] = ["get", "patch", "update"]
        return payload

    async def _serve_fast(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """KMock's object semantics without its reaction matching (same events, same errors)."""
        resource, action = request.resource, request.action
        assert resource is not None  # checked by the caller; for the type checker
        known = resource in self.resources or any(r == resource for r, _, _ in self.objects)
        if not known and action in (kmock.action.LIST, kmock.action.FETCH):
            raise KubernetesResourceNotFoundError()
        bus = self._buses[resource]
        async with self._lock:
            if action == kmock.action.LIST:
                selector = _parse_selector(request.params.get("labelSelector"))
                items = [
                    obj.raw
                    for (r, ns, _), obj in self.objects.items()
                    if r == resource
                    and (request.namespace is None or ns == request.namespace)
                    and not obj.deleted
                    and _selected(obj.raw, selector)
                ]
                version = self._versions.head  # the watch from it misses nothing after the list
                payload: Any = {
                    **self._list_type(resource),
                    "metadata": {"resourceVersion": version},
                    "items": items,
                }
                return aiohttp.web.json_response(payload)
            if action == kmock.action.CREATE:
                meta = request.data.get("metadata") or {}
                namespace = request.namespace or meta.get("namespace")
                key = (resource, namespace, str(meta.get("name")))
                if key in self.objects and not self.objects[key].deleted:
                    raise KubernetesObjectConflictError()
                if key in self.objects:
                    self.objects[key].create(request.data)
                else:
                    self.objects[key] = request.data
                raw = self.objects[key].raw
                await bus.put({"type": "ADDED", "object": raw})
                return aiohttp.web.json_response(raw, status=201)
            key = (resource, request.namespace, request.name or "")
            if key not in self.objects or self.objects[key].deleted:
                raise KubernetesObjectNotFoundError()
            obj = self.objects[key]
            if action == kmock.action.FETCH:
                return aiohttp.web.json_response(obj.raw)
            if action == kmock.action.UPDATE:
                obj.patch(request.data)
                await bus.put({"type": "MODIFIED", "object": obj.raw})
            elif obj.get("metadata", {}).get("finalizers") and not obj.get("metadata", {}).get(
                "deletionTimestamp"
            ):  # DELETE of an object with finalizers: mark it, keep it
                mark = {"deletionTimestamp": _now(), "resourceVersion": self._versions.new()}
                obj.patch({"metadata": mark})
                await bus.put({"type": "MODIFIED", "object": obj.raw})
            meta = obj.get("metadata", {})
            last = obj.raw
            if action == kmock.action.DELETE and not meta.get("finalizers"):
                obj.delete()
                await bus.put({"type": "DELETED", "object": last})
            elif meta.get("deletionTimestamp") and not meta.get("finalizers"):
                obj.delete()  # the last finalizer went: garbage-collect it now
                await bus.put({"type": "DELETED", "object": last})
            return aiohttp.web.json_response(last)

    async def _serve_replace(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """PUT of a whole object, as an API server serves an update: 404 when absent; 409 when
        the body's `metadata.resourceVersion` is set and is not the stored one (optimistic
        concurrency); uid and creationTimestamp kept, resourceVersion bumped (generation too on
        a spec change), the stored status kept where the kind has a status subresource."""
        resource, data = request.resource, request.data
        assert resource is not None  # checked by the caller; for the type checker
        if not isinstance(data, dict):
            raise kmock.KubernetesError(400, "BadRequest", "body must be a JSON object")
        crd = self._crd(resource)
        async with self._lock:
            key = (resource, request.namespace, request.name or "")
            if key not in self.objects or self.objects[key].deleted:
                raise KubernetesObjectNotFoundError()
            obj = self.objects[key]
            old = copy.deepcopy(obj.raw)
            old_meta = old.get("metadata") or {}
            new = copy.deepcopy(data)
            meta = new.setdefault("metadata", {})
            if meta.get("name") != request.name:
                raise kmock.KubernetesError(400, "BadRequest", "metadata.name does not match")
            given = meta.get("resourceVersion")
            if given and given != old_meta.get("resourceVersion"):
                raise kmock.KubernetesError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource.plural} "{request.name}": the '
                    "object has been modified; please apply your changes to the latest version "
                    "and try again",
                )
            if crd is not None and crd.has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
            generation = int(old_meta.get("generation") or 1)
            meta.update(
                namespace=old_meta.get("namespace"),
                uid=old_meta.get("uid"),
                creationTimestamp=old_meta.get("creationTimestamp"),
                resourceVersion=self._versions.new(),
                generation=generation + (new.get("spec") != old.get("spec")),
            )
            problems = metadata_problems(new)
            if crd is not None and self.validate:
                problems += [str(p) for p in crd.validator.validate(new, old)]
            if problems:
                what = f"{self.cluster_name}: PUT {request.url.path}"
                self.violations.extend(f"{what}: {p}" for p in problems)
                raise kmock.KubernetesError(422, "Invalid", "; ".join(problems))
            obj.create(new)
            await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
            return aiohttp.web.json_response(obj.raw)

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """A watch as a server serves it: from a `resourceVersion`, the events after it (410
        Gone when the history no longer reaches it); from none (or "0"), every object as ADDED
        first; then events as they come, until `timeoutSeconds` if given."""
        yield b""  # KMock sends the headers with the first chunk: a watch may stay quiet
        resource = request.resource
        assert resource is not None  # a watch is of a resource; for the type checker
        bus = self._buses[resource]
        assert isinstance(bus, RecordingBus)  # every bus is made one; for the type checker
        since = str(request.params.get("resourceVersion") or "")
        async with self._lock:  # every write puts its event under this lock: none is missed
            if since in ("", "0"):
                backlog: list[dict[str, Any]] | None = [
                    {"type": "ADDED", "object": obj.raw}
                    for (r, _, _), obj in self.objects.items()
                    if r == resource and not obj.deleted
                ]
            else:
                backlog = bus.since(since)
            marker = await bus.mark()
        try:
            if backlog is None:
                yield gone(since)
                return
            for event in backlog:
                if _watched(request, event):
                    yield event
            loop = asyncio.get_running_loop()
            timeout = request.params.get("timeoutSeconds")
            deadline = loop.time() + float(timeout) if timeout else None
            stream = aiter(bus.stream(since=marker))
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except TimeoutError:
                    return  # the server ends a watch at its timeout; the client resumes it
                if _watched(request, event):
                    yield event
        finally:
            await bus.unmark(marker)

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
            resourceVersion=self._versions.new(),
        )
        meta.pop("deletionTimestamp", None)
        if request.resource is not None and request.resource.plural:
            key = (request.resource.plural, meta.get("namespace"), str(meta.get("name")))
            self.created_at.setdefault(key, time.monotonic())
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
        meta["resourceVersion"] = new["metadata"]["resourceVersion"] = self._versions.new()
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
        version = self._versions.new()
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


_FAST_ACTIONS = frozenset(
    {
        kmock.action.LIST,
        kmock.action.FETCH,
        kmock.action.CREATE,
        kmock.action.UPDATE,
        kmock.action.DELETE,
    }
)


def _parse_selector(text: str | None) -> dict[str, str]:
    """Equality-based label selectors (`a=b,c==d`); set-based ones are not emulated."""
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            key, _, value = part.replace("==", "=").partition("=")
            out[key.strip()] = value.strip()
    return out


def _selected(obj: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _watched(request: kmock.Request, event: Mapping[str, Any]) -> bool:
    """Whether `event` is in the watch's namespace (and of its object, for a named watch)."""
    meta = (event.get("object") or {}).get("metadata") or {}
    return (request.namespace is None or meta.get("namespace") == request.namespace) and (
        request.name is None or meta.get("name") == request.name
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
