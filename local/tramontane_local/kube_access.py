"""What each component asks of an API server, as RBAC sees it: the emulator's access record.

`request_access` reads an HTTP request the way the API server's request-info resolver does,
into the attributes RBAC authorizes: verb (`get`, `list`, `watch`, `create`, `update`,
`patch`, `delete`, `deletecollection`), API group, resource (with its subresource,
`pods/log`), namespace (None: cluster-scoped, or a request across all namespaces) and name.
Discovery and other non-resource paths (`/api`, `/apis/...`, `/version`) give None: every
authenticated user may read them.

A write that sets an owner reference with `blockOwnerDeletion: true` also needs `update` on
the owner's `finalizers` subresource where the API server runs the
OwnerReferencesPermissionEnforcement admission plugin (OpenShift, many hardened clusters):
`owner_accesses` names those, and the emulator records them beside the write itself.

`RECORDER` collects one `Access` per request, keyed by the client's User-Agent product
(`tramontane-operator/0.1.0` -> `tramontane-operator`), from every `ValidatingEmulator`, while
`RECORDER.enabled` (off by default, so local mode keeps nothing). The operator and router test
tiers turn it on for their session and check every access against the chart's roles
(`tests/rbac.py`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Access:
    """One request's RBAC attributes, and who made it where."""

    cluster: str  # the emulated cluster's name
    component: str  # the User-Agent's product: tramontane-operator, tramontane-router, kopf
    verb: str
    group: str  # "" for the core group
    resource: str  # with its subresource: pods/log, tenants/status
    namespace: str | None
    name: str | None


def request_access(
    method: str, path: str, query: Mapping[str, str]
) -> tuple[str, str, str, str | None, str | None] | None:
    """(verb, group, resource[/subresource], namespace, name) of a resource request; None for
    discovery and other non-resource paths."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # the group-version's discovery document
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watching = query.get("watch") in ("true", "1")
    verb = {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method.upper())
    if verb is None:
        verb = "watch" if watching else ("get" if name else "list")
    return verb, group, resource, namespace, name


def owner_accesses(
    body: Any, plurals: Mapping[tuple[str, str], str], namespace: str | None
) -> list[tuple[str, str, str, str | None, str | None]]:
    """The `update <owner>/finalizers` checks a write of `body` (an object, a merge patch or
    a JSON patch) triggers: one per owner reference with `blockOwnerDeletion: true` whose
    kind is in `plurals` ((group, kind) -> plural)."""
    refs: list[Any] = []
    if isinstance(body, Mapping):
        refs = list(((body.get("metadata") or {}).get("ownerReferences")) or [])
    elif isinstance(body, list):
        for op in body:
            if isinstance(op, Mapping) and str(op.get("path", "")).startswith(
                "/metadata/ownerReferences"
            ):
                value = op.get("value")
                refs += value if isinstance(value, list) else [value]
    out = []
    for ref in refs:
        if not isinstance(ref, Mapping) or ref.get("blockOwnerDeletion") is not True:
            continue
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        plural = plurals.get((group, str(ref.get("kind"))))
        if plural is not None:
            out.append(("update", group, f"{plural}/finalizers", namespace, ref.get("name")))
    return out


def component_of(user_agent: str) -> str:
    """The product of a User-Agent (`tramontane-router/0.1.0 (...)` -> `tramontane-router`)."""
    return user_agent.split("/", 1)[0].split(" ", 1)[0].strip() or "unknown"


@dataclass
class AccessRecorder:
    """Every access the emulators served while `enabled` (thread-safe: the operator tier runs
    the operator in its own thread and event loop)."""

    enabled: bool = False
    accesses: set[Access] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self,
        cluster: str,
        user_agent: str,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes = b"",
        plurals: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        """Record a request (and, given its body and the owners' plurals, the owner checks a
        write implies)."""
        if not self.enabled:
            return
        found = request_access(method, path, query)
        if found is None:
            return
        component = component_of(user_agent)
        found_all = [found]
        if body and plurals:
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            found_all += owner_accesses(decoded, plurals, found[3])
        with self._lock:
            for verb, group, resource, namespace, name in found_all:
                self.accesses.add(
                    Access(cluster, component, verb, group, resource, namespace, name)
                )

    def take(self) -> set[Access]:
        """What was recorded so far, forgetting it."""
        with self._lock:
            taken, self.accesses = self.accesses, set()
        return taken


RECORDER = AccessRecorder()
