"""`HubSource`: the routing table of a router in a cluster, built from what the hub holds.

Watched on the hub, with one `KubeClient` and `tramontane_kube.Informer`s (list, then watch,
resuming a watch the server ended from the last resourceVersion):
- Tenants, ModelDeployments (every namespace) and ComputeClusters;
- Secrets, but only in the namespaces some Tenant's `spec.apiKeySecretRefs` names: one
  informer per such namespace, started and stopped as Tenants change. Of those Secrets, only
  the ones a Tenant references are decoded into the table (as digests: see `keys.py`).

Any event marks the table stale; after a short debounce (`debounce_s`, 50 ms: a burst of
events makes one rebuild) the table is rebuilt with the pure `build_table` and swapped in, and
subscribers are called with it. Objects are parsed with the `tramontane_api` models once per
(namespace, name, resourceVersion), so a rebuild re-parses only what changed; an object that
does not parse is left out, with one warning per version naming the field (never a value, so
no key material reaches the logs). A rotated, removed or deleted key, a deleted Tenant and a
pool that lost its ready replicas take effect as soon as the watch event arrives (plus the
debounce), with no restart. While the hub cannot be reached the informers retry with backoff
and the router keeps routing with the last table it built.

RBAC the router's service account needs on the hub (what the chart grants, checked against
what the router tier sends: docs/router.md, Permissions):
- `list`, `watch` on `tenants`, `modeldeployments` and `computeclusters` (`tramontane.dev`),
  cluster-wide (a ClusterRole and ClusterRoleBinding);
- `list`, `watch` on `secrets` only in the namespaces holding API keys (the chart's
  `tenants.keyNamespaces`: a RoleBinding in each). Keep those namespaces for key Secrets
  alone: every Secret there is held in the router's memory, though only referenced ones are
  ever decoded.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from tramontane_api.v1alpha1 import ComputeCluster, ModelDeployment, Resource, Tenant
from tramontane_kube import (
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ApiError,
    ClusterConfig,
    Informer,
    KubeClient,
    ResourceRef,
    Unreachable,
)

from .sources import Listener
from .table import RoutingTable, SecretKey, build_table, secret_values

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Resource)
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


def _user_agent() -> str:
    """`tramontane-router/VERSION`, so the hub's audit log (and the test tiers' RBAC check)
    tells the router's requests from the operator's."""
    try:
        version = importlib.metadata.version("tramontane")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        version = "dev"
    return f"tramontane-router/{version}"


USER_AGENT = _user_agent()


class HubSyncError(RuntimeError):
    """The hub's objects could not be listed in time (unreachable, or RBAC refuses)."""


class ParseCache(Generic[M]):
    """Parsed objects of one kind, each kept with the resourceVersion it was parsed at."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self.parses = 0  # how many objects were parsed (not taken from the cache), for tests
        self._cache: dict[Key, tuple[str, M | None]] = {}

    def parse_all(self, items: Mapping[Key, Mapping[str, Any]]) -> list[M]:
        """The valid objects among `items`, in (namespace, name) order; forgets the others."""
        fresh: dict[Key, tuple[str, M | None]] = {}
        for key in sorted(items):
            obj = items[key]
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            hit = self._cache.get(key)
            if hit is not None and version and hit[0] == version:
                fresh[key] = hit
            else:
                fresh[key] = (version, self._parse(key, obj))
        self._cache = fresh
        return [parsed for _, parsed in fresh.values() if parsed is not None]

    def _parse(self, key: Key, obj: Mapping[str, Any]) -> M | None:
        self.parses += 1
        try:
            return self.model.model_validate(obj)
        except ValidationError as exc:
            where = "/".join(k for k in key if k)
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
            )  # locations and messages only: an input value could be a secret
            log.warning(
                "%s %s (resourceVersion %s): skipped, invalid: %s",
                self.model.KIND_INFO.kind,
                where,
                (obj.get("metadata") or {}).get("resourceVersion"),
                problems,
            )
            return None


class HubSource:
    """A `RoutingSource` over the hub's Tenants, key Secrets, ModelDeployments and clusters."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        debounce_s: float = 0.05,
        sync_timeout_s: float = 30.0,
        watch_timeout_s: int = 300,
    ) -> None:
        self.config = config
        self.debounce_s = debounce_s
        self.sync_timeout_s = sync_timeout_s
        self.watch_timeout_s = watch_timeout_s
        self.rebuilds = 0  # tables built, for tests and debugging
        self._table = RoutingTable()
        self._listeners: list[Listener] = []
        self._client: KubeClient | None = None
        self._tenants: Informer | None = None
        self._deployments: Informer | None = None
        self._clusters: Informer | None = None
        self._secrets: dict[str, Informer] = {}  # namespace -> informer of its Secrets
        self._parsed_tenants = ParseCache(Tenant)
        self._parsed_deployments = ParseCache(ModelDeployment)
        self._parsed_clusters = ParseCache(ComputeCluster)
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ RoutingSource
    @property
    def table(self) -> RoutingTable:
        return self._table

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def client(self) -> KubeClient | None:
        """The hub client, once started (the budget exchange writes its Lease with it)."""
        return self._client

    async def start(self) -> None:
        """List everything, build the first table, then follow the watches.

        Raises `HubSyncError` (naming the hub and the cause) when Tenants, ModelDeployments
        or ComputeClusters cannot be listed within `sync_timeout_s`. A keys namespace whose
        Secrets cannot be listed by then (no Role there for the router) is logged as an
        error and its keys are refused until they can be read: one Tenant's misconfigured
        namespace must not keep every router from starting."""
        if self._client is not None:
            return
        self._client = KubeClient("hub", self.config, user_agent=USER_AGENT)
        self._tenants = self._informer(TENANT)
        self._deployments = self._informer(MODELDEPLOYMENT)
        self._clusters = self._informer(COMPUTECLUSTER)
        for informer in self._informers():
            informer.start()
        deadline = asyncio.get_running_loop().time() + self.sync_timeout_s
        if not await _all_synced(self._informers(), deadline):
            cause = await self._sync_failure()
            await self.stop()
            raise HubSyncError(self._where(cause)) from None
        # Until every keys namespace named so far is listed too (Tenants may name more).
        while await self._watch_key_namespaces(self._parse_tenants()):
            if not await _all_synced(list(self._secrets.values()), deadline):
                log.error("%s; their keys are refused until they can be read",
                          self._where(await self._sync_failure()))  # fmt: skip
                break
        self._dirty.clear()
        self._publish(self._build())
        self._task = asyncio.create_task(self._follow(), name="hub-source")

    def _where(self, cause: str) -> str:
        return f"hub {self.config.server}: {cause} (not listed within {self.sync_timeout_s:g}s)"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for informer in self._informers():
            await informer.stop()
        self._secrets.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ----------------------------------------------------------------------- inspection
    @property
    def secret_namespaces(self) -> list[str]:
        """The namespaces whose Secrets are watched now."""
        return sorted(self._secrets)

    def parse_counts(self) -> dict[str, int]:
        return {
            "Tenant": self._parsed_tenants.parses,
            "ModelDeployment": self._parsed_deployments.parses,
            "ComputeCluster": self._parsed_clusters.parses,
        }

    # -------------------------------------------------------------------------- workings
    def _informer(self, ref: ResourceRef, namespace: str | None = None) -> Informer:
        if self._client is None:  # pragma: no cover - only called from start()
            raise RuntimeError("HubSource is not started")
        return Informer(
            self._client,
            ref,
            {},
            self._on_event,
            namespace=namespace,
            watch_timeout_s=self.watch_timeout_s,
        )

    def _informers(self) -> list[Informer]:
        fixed = [self._tenants, self._deployments, self._clusters]
        return [i for i in fixed if i is not None] + list(self._secrets.values())

    def _on_event(self, cluster: str, obj: Mapping[str, Any]) -> None:
        self._dirty.set()

    async def _follow(self) -> None:
        """Rebuild after each burst of events: at most one table per `debounce_s`."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce_s)
            self._dirty.clear()
            try:
                tenants = self._parse_tenants()
                await self._watch_key_namespaces(tenants)
                self._publish(self._build(tenants))
            except Exception:  # a bug must not stop the table from following the hub
                log.exception("routing table rebuild failed; keeping the previous table")

    def _parse_tenants(self) -> list[Tenant]:
        return self._parsed_tenants.parse_all(_items(self._tenants))

    async def _watch_key_namespaces(self, tenants: Iterable[Tenant]) -> bool:
        """Watch Secrets in exactly the namespaces these Tenants' keys are in; whether an
        informer was started (its Secrets are not listed yet)."""
        wanted = {ref.namespace for t in tenants for ref in t.spec.api_key_secret_refs or []}
        for namespace in sorted(set(self._secrets) - wanted):
            await self._secrets.pop(namespace).stop()
            log.info("stopped watching Secrets in namespace %s (no Tenant keys there)", namespace)
        added = sorted(wanted - set(self._secrets))
        for namespace in added:
            informer = self._informer(SECRET, namespace)
            self._secrets[namespace] = informer
            informer.start()
            log.info("watching Secrets in namespace %s (Tenant keys)", namespace)
        return bool(added)

    def _build(self, tenants: list[Tenant] | None = None) -> RoutingTable:
        tenants = self._parse_tenants() if tenants is None else tenants
        secrets: dict[SecretKey, dict[str, str]] = {}
        for t in tenants:
            for ref in t.spec.api_key_secret_refs or []:
                informer = self._secrets.get(ref.namespace)
                obj = informer.get(ref.namespace, ref.name) if informer is not None else None
                if obj is not None:
                    secrets[(ref.namespace, ref.name)] = secret_values(obj)
        table = build_table(
            tenants,
            secrets,
            self._parsed_deployments.parse_all(_items(self._deployments)),
            self._parsed_clusters.parse_all(_items(self._clusters)),
        )
        self.rebuilds += 1
        return table

    def _publish(self, table: RoutingTable) -> None:
        self._table = table
        for listener in self._listeners:
            try:
                listener(table)
            except Exception:
                log.exception("routing table listener %r failed", listener)

    async def _sync_failure(self) -> str:
        """Why the first listing did not finish: the unsynced informers and, asked once
        more, what the hub answers to the first of them."""
        pending = [i for i in self._informers() if not i.synced.is_set()]
        if not pending or self._client is None:
            return "listing did not finish"
        names = ", ".join(_describe(i) for i in pending)
        first = pending[0]
        try:
            await asyncio.wait_for(self._client.list(first.ref, first.namespace), 5)
        except (ApiError, Unreachable) as exc:
            return f"{names} not listed: {exc}"
        except TimeoutError:
            return f"{names} not listed: no answer"
        return f"{names} not listed"


async def _all_synced(informers: list[Informer], deadline: float) -> bool:
    """Whether all of `informers` listed their objects before `deadline` (loop time)."""
    if all(i.synced.is_set() for i in informers):
        return True
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            await asyncio.gather(*(i.synced.wait() for i in informers))
    except TimeoutError:
        return False
    return True


def _items(informer: Informer | None) -> Mapping[Key, Mapping[str, Any]]:
    return informer.items if informer is not None else {}


def _describe(informer: Informer) -> str:
    where = f" in namespace {informer.namespace}" if informer.namespace else ""
    return f"{informer.ref.plural}{where}"


__all__ = ["HubSource", "HubSyncError", "ParseCache"]
