"""What reconciles read about other objects: list-then-watch caches of the hub, parsed once.

One `Informer` per hub kind the operator reads (ComputeClusters, Tenants, FineTuneJobs,
ModelDeployments; per namespace when the operator watches only some). Each object is parsed
with its pydantic model when it changes; objects that fail to parse are left out (their own
reconciles report them). Reconciles wait for `synced()` first, so after a restart no
ComputeCluster is mistaken for gone and no quota is counted short. The ModelDeployment cache
also feeds the controller (`handlers/modeldeployment.py`) and the GPU ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from tramontane_api.v1alpha1 import (
    ComputeCluster,
    FineTuneJob,
    ModelDeployment,
    Tenant,
)
from tramontane_kube import (
    COMPUTECLUSTER,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    TENANT,
    KubeClient,
    ResourceRef,
)
from tramontane_kube.informer import Informer
from tramontane_operator.placement import gpu_allocations

Key = tuple[str, str]  # (namespace or "", name)
M = TypeVar("M", bound=BaseModel)


class GpuLedger:
    """GPUs held per cluster and GPU type, summed over ModelDeployments as their status says.

    Kept up to date by the ModelDeployment index handler, so placement reads totals in
    O(clusters) instead of summing every ModelDeployment on every reconcile.
    """

    def __init__(self) -> None:
        self._by_md: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        self._total: dict[str, dict[str, int]] = {}

    def set(self, key: tuple[str, str], held: Mapping[str, Mapping[str, int]]) -> None:
        self._add(self._by_md.pop(key, {}), -1)
        if held:
            self._by_md[key] = {c: dict(t) for c, t in held.items()}
            self._add(self._by_md[key], 1)

    def remove(self, key: tuple[str, str]) -> None:
        self.set(key, {})

    def _add(self, held: Mapping[str, Mapping[str, int]], sign: int) -> None:
        for cluster, per_type in held.items():
            totals = self._total.setdefault(cluster, {})
            for gpu_type, n in per_type.items():
                totals[gpu_type] = totals.get(gpu_type, 0) + sign * n

    def in_cluster(self, cluster: str) -> dict[str, int]:
        return {t: n for t, n in self._total.get(cluster, {}).items() if n}

    def held_by_others(self, key: tuple[str, str]) -> dict[str, dict[str, int]]:
        own = self._by_md.get(key, {})
        out = {}
        for cluster, per_type in self._total.items():
            mine = own.get(cluster, {})
            left = {t: n - mine.get(t, 0) for t, n in per_type.items() if n - mine.get(t, 0)}
            if left:
                out[cluster] = left
        return out


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
        self.informers = [Informer(hub, ref, {}, self._event, namespace=ns) for ns in namespaces]
        # Called after every change with (key, object, gone): the last state of a deleted one.
        self.on_event: Callable[[Key, Mapping[str, Any], bool], None] | None = None

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
        if self.on_change is not None and (raw is None or before is None or model is not before[1]):
            self.on_change(key, model)
        if self.on_event is not None:
            self.on_event(key, obj if raw is None else raw, raw is None)


_BOOKKEEPING = frozenset({"resourceVersion", "finalizers", "managedFields"})


def _changed_beyond_bookkeeping(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether more than a finalizer or the resourceVersion changed (those need no parse)."""

    def meaningful(obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        return {**obj, "metadata": {k: v for k, v in meta.items() if k not in _BOOKKEEPING}}

    return meaningful(before) != meaningful(after)


class Indexes:
    """The hub caches, and the lookups reconciles make in them."""

    def __init__(self, hub: KubeClient, namespaces: Sequence[str] | None, ledger: GpuLedger):
        scoped: list[str | None] = list(namespaces) if namespaces else [None]
        self.ledger = ledger
        self.clusters = Cache(hub, COMPUTECLUSTER, ComputeCluster, [None])
        self.tenant_objects = Cache(hub, TENANT, Tenant, [None], self._tenant_changed)
        self.finetunejobs = Cache(hub, FINETUNEJOB, FineTuneJob, scoped, self._job_changed)
        self.modeldeployments = Cache(
            hub, MODELDEPLOYMENT, ModelDeployment, scoped, self._md_changed,
            reparse=_changed_beyond_bookkeeping,
        )  # fmt: skip
        self._tenant_by_namespace: dict[str, list[str]] | None = None
        self._adapters: dict[str, dict[str, str]] = {}  # namespace -> job name -> adapter URI

    def _caches(self) -> list[Cache[Any]]:
        return [self.clusters, self.tenant_objects, self.finetunejobs, self.modeldeployments]

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
        if self._tenant_by_namespace is None:
            owners: dict[str, list[str]] = {}
            for tenant in self.tenants():
                for ns in tenant.spec.namespaces:
                    owners.setdefault(ns, []).append(tenant.metadata.name)
            self._tenant_by_namespace = {ns: sorted(names) for ns, names in owners.items()}
        found = self._tenant_by_namespace.get(namespace)
        return found[0] if found else None

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

    def _md_changed(self, key: Key, md: ModelDeployment | None) -> None:
        # CPU-only deployments are cached too: tenants' maxModelDeployments counts them, and
        # a deployment that drops its GPUs must leave the ledger.
        ledger_key = (key[0] or "default", key[1])
        if md is None:
            self.ledger.remove(ledger_key)
        else:
            self.ledger.set(ledger_key, gpu_allocations([md]))
