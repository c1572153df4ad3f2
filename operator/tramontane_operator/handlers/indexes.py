"""Kopf in-memory indexes of what reconciles read about other objects.

Kopf fills every index before any handler runs, so after a restart the first reconcile
already knows every ComputeCluster (placement never mistakes "not seen yet" for "gone").
Objects that fail to parse are left out of the indexes (their own handlers report them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import kopf
from pydantic import ValidationError

from tramontane_operator.api.v1alpha1 import (
    GROUP,
    VERSION,
    ComputeCluster,
    FineTuneJob,
    ModelDeployment,
    Tenant,
)
from tramontane_operator.placement import gpu_allocations

ALL = "all"
F = TypeVar("F", bound=Callable[..., Any])
# Kopf passes each index to handlers as a keyword argument named by its id.
INDEX_IDS = {
    "computeclusters": "computeclusters_idx",
    "modeldeployments": "modeldeployments_idx",
    "tenants": "tenants_idx",
    "finetunejobs": "adapters_idx",
}


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


def register(registry: kopf.OperatorRegistry, ledger: GpuLedger) -> None:
    def index(plural: str) -> Callable[[F], F]:
        decorator = kopf.index(GROUP, VERSION, plural, registry=registry, id=INDEX_IDS[plural])
        return cast(Callable[[F], F], decorator)

    @index("computeclusters")
    async def computeclusters_idx(body: kopf.Body, **_: Any) -> dict[str, ComputeCluster]:
        try:
            return {ALL: ComputeCluster.model_validate(dict(body))}
        except ValidationError:
            return {}

    @index("modeldeployments")
    async def modeldeployments_idx(body: kopf.Body, **_: Any) -> dict[str, ModelDeployment]:
        try:
            md = ModelDeployment.model_validate(dict(body))
        except ValidationError:
            return {}
        # CPU-only deployments are indexed too: tenants' maxModelDeployments counts them, and
        # a deployment that drops its GPUs must leave the ledger.
        ledger.set(_md_key(md), gpu_allocations([md]))
        return {ALL: md}

    @index("tenants")
    async def tenants_idx(body: kopf.Body, name: str, **_: Any) -> dict[str, str]:
        try:
            tenant = Tenant.model_validate(dict(body))
        except ValidationError:
            return {}
        return {namespace: name for namespace in tenant.spec.namespaces}

    @index("finetunejobs")
    async def adapters_idx(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
        try:
            job = FineTuneJob.model_validate(dict(body))
        except ValidationError:
            return {}
        adapter = job.status.adapter if job.status else None
        if adapter is None:
            return {}
        return {(job.metadata.namespace or "", job.metadata.name): adapter.uri}


@dataclass(frozen=True)
class Indexes:
    """The indexes as one value, taken from a handler's keyword arguments."""

    computeclusters: Mapping[str, Any]
    modeldeployments: Mapping[str, Any]
    tenants: Mapping[str, Any]
    adapters: Mapping[tuple[str, str], Any]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        ids = INDEX_IDS
        return cls(
            kwargs[ids["computeclusters"]],
            kwargs[ids["modeldeployments"]],
            kwargs[ids["tenants"]],
            kwargs[ids["finetunejobs"]],
        )

    def compute_clusters(self) -> list[ComputeCluster]:
        return sorted(self.computeclusters.get(ALL, ()), key=lambda cc: cc.metadata.name)

    def tenant_of(self, namespace: str) -> str | None:
        owners = sorted(self.tenants.get(namespace, ()))
        return owners[0] if owners else None

    def adapter_uris(self, namespace: str) -> dict[str, str]:
        """FineTuneJob name -> adapter URI, for jobs in `namespace` that produced one."""
        return {
            name: next(iter(uris))
            for (ns, name), uris in self.adapters.items()
            if ns == namespace and uris
        }


def _md_key(md: ModelDeployment) -> tuple[str, str]:
    return (md.metadata.namespace or "default", md.metadata.name)
