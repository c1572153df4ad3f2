"""What reconciles read about other objects: list-then-watch caches of the hub, parsed once.

One `Informer` per hub kind the operator reads (ComputeClusters, Tenants, FineTuneJobs,
ModelDeployments, Evaluations; per namespace when the operator watches only some). Each
object is parsed with its pydantic model when it changes; objects that fail to parse are
left out (their own reconciles report them). Reconciles wait for `synced()` first, so after
a restart no ComputeCluster is mistaken for gone and no quota is counted short. Every cache
also feeds the controllers (`handlers/controller.py`): its `listeners` hear each change once cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from tramontane_api.v1alpha1 import (
    ComputeCluster,
    Evaluation,
    FineTuneJob,
    ModelDeployment,
    Tenant,
)
from tramontane_kube import (
    COMPUTECLUSTER,
    EVALUATION,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    TENANT,
    KubeClient,
    ResourceRef,
)
from tramontane_kube.informer import Informer

Key = tuple[str, str]  # (namespace or "", name)
M = TypeVar("M", bound=BaseModel)


class Cache(Generic[M]):
    """The objects of one kind in the hub: raw bodies (the informers') and parsed models."""

    def __init__(
        self,
        hub: KubeClient,
        ref: ResourceRef,
        model: type[M],
        namespaces: Sequence[str | None],
        on_change: Callable[[Key, M | None], None] | None = None,
        reparse: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.model = model
        self.on_change = on_change
        self._reparse = reparse
        self._parsed: dict[Key, tuple[dict[str, Any], M | None]] = {}
        self._by_namespace: dict[str, dict[Key, M]] = {}  # parsed ones, per namespace
        self.informers = [Informer(hub, ref, {}, self._event, namespace=ns) for ns in namespaces]
        # Called after every change with (key, object, gone): the last state of a deleted one.
        self.listeners: list[Callable[[Key, Mapping[str, Any], bool], None]] = []

    def raw(self, key: Key) -> dict[str, Any] | None:
        for informer in self.informers:
            obj = informer.get(*key)
            if obj is not None:
                return obj
        return None

    def object_keys(self) -> list[Key]:
        return [k for informer in self.informers for k in informer.items]

    def parsed(self) -> list[M]:
        return [m for _, m in self._parsed.values() if m is not None]

    def parsed_in(self, namespaces: Iterable[str]) -> list[M]:
        """The parsed objects in `namespaces` (a tenant's), without scanning the others."""
        return [m for ns in namespaces for m in self._by_namespace.get(ns, {}).values()]

    def _event(self, _cluster: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta["name"])
        raw = self.raw(key)
        before = self._parsed.get(key)
        if raw is None:
            self._parsed.pop(key, None)
            model = None
        elif before is not None and self._reparse is not None and not self._reparse(before[0], raw):
            self._parsed[key] = (raw, before[1])  # e.g. only a finalizer changed
            model = before[1]
        else:
            try:
                model = self.model.model_validate(raw)
            except ValidationError:
                model = None
            self._parsed[key] = (raw, model)
        in_namespace = self._by_namespace.setdefault(key[0], {})
        if model is None:
            in_namespace.pop(key, None)
        else:
            in_namespace[key] = model
        if self.on_change is not None and (raw is None or before is None or model is not before[1]):
            self.on_change(key, model)
        for listener in self.listeners:
            listener(key, obj if raw is None else raw, raw is None)


_BOOKKEEPING = frozenset({"resourceVersion", "finalizers", "managedFields"})


def _changed_beyond_bookkeeping(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether more than a finalizer or the resourceVersion changed (those need no parse)."""

    def meaningful(obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        return {**obj, "metadata": {k: v for k, v in meta.items() if k not in _BOOKKEEPING}}

    return meaningful(before) != meaningful(after)


class Indexes:
    """The hub caches, and the lookups reconciles make in them."""

    def __init__(self, hub: KubeClient, namespaces: Sequence[str] | None):
        scoped: list[str | None] = list(namespaces) if namespaces else [None]
        self.clusters = Cache(hub, COMPUTECLUSTER, ComputeCluster, [None])
        self.tenant_objects = Cache(hub, TENANT, Tenant, [None], self._tenant_changed)
        self.finetunejobs = Cache(hub, FINETUNEJOB, FineTuneJob, scoped, self._job_changed)
        self.modeldeployments = Cache(
            hub, MODELDEPLOYMENT, ModelDeployment, scoped, reparse=_changed_beyond_bookkeeping
        )
        self.evaluations = Cache(hub, EVALUATION, Evaluation, scoped)
        self._tenant_by_namespace: dict[str, list[str]] | None = None
        self._adapters: dict[str, dict[str, str]] = {}  # namespace -> job name -> adapter URI

    def _caches(self) -> list[Cache[Any]]:
        return [
            self.clusters,
            self.tenant_objects,
            self.finetunejobs,
            self.modeldeployments,
            self.evaluations,
        ]

    def cache(self, kind: str) -> Cache[Any]:
        """The cache of `kind` (its name: "ModelDeployment", "FineTuneJob", ...)."""
        return {cache.model.__name__: cache for cache in self._caches()}[kind]

    def start(self) -> None:
        for cache in self._caches():
            for informer in cache.informers:
                informer.start()

    async def stop(self) -> None:
        for cache in self._caches():
            for informer in cache.informers:
                await informer.stop()

    async def synced(self) -> None:
        """Wait until every cache has listed once (reconciles read nothing half-filled)."""
        for cache in self._caches():
            for informer in cache.informers:
                await informer.synced.wait()

    def is_synced(self) -> bool:
        """Whether every cache has listed once (without waiting, unlike `synced`)."""
        return all(i.synced.is_set() for cache in self._caches() for i in cache.informers)

    # Lookups.
    def compute_clusters(self) -> list[ComputeCluster]:
        return sorted(self.clusters.parsed(), key=lambda cc: cc.metadata.name)

    def tenants(self) -> list[Tenant]:
        return self.tenant_objects.parsed()

    def jobs(self) -> list[FineTuneJob]:
        return self.finetunejobs.parsed()

    def deployments(self) -> list[ModelDeployment]:
        return self.modeldeployments.parsed()

    def tenant_of(self, namespace: str) -> str | None:
        """The name of the tenant owning `namespace` (with a conflict, the first by name)."""
        if self._tenant_by_namespace is None:
            owners: dict[str, list[str]] = {}
            for tenant in self.tenants():
                for ns in tenant.spec.namespaces:
                    owners.setdefault(ns, []).append(tenant.metadata.name)
            self._tenant_by_namespace = {ns: sorted(names) for ns, names in owners.items()}
        found = self._tenant_by_namespace.get(namespace)
        return found[0] if found else None

    def tenant_object(self, namespace: str) -> Tenant | None:
        """The Tenant owning `namespace` (as `tenant_of` names it)."""
        name = self.tenant_of(namespace)
        if name is None:
            return None
        for tenant in self.tenants():
            if tenant.metadata.name == name:
                return tenant
        return None

    def adapter_uris(self, namespace: str) -> dict[str, str]:
        """FineTuneJob name -> adapter URI, for jobs in `namespace` that produced one."""
        return dict(self._adapters.get(namespace, {}))

    # Derived indexes, kept current per change.
    def _tenant_changed(self, _key: Key, _tenant: Tenant | None) -> None:
        self._tenant_by_namespace = None

    def _job_changed(self, key: Key, job: FineTuneJob | None) -> None:
        namespace, name = key
        adapter = job.status.adapter if job is not None and job.status else None
        if adapter is not None:
            self._adapters.setdefault(namespace, {})[name] = adapter.uri
        elif name in self._adapters.get(namespace, {}):
            del self._adapters[namespace][name]
