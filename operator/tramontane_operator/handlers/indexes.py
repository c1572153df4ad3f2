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


def register(registry: kopf.OperatorRegistry) -> None:
    def index(plural: str) -> Callable[[F], F]:
        decorator = kopf.index(GROUP, VERSION, plural, registry=registry, id=INDEX_IDS[plural])
        return cast(Callable[[F], F], decorator)

    @index("computeclusters")
    def computeclusters_idx(body: kopf.Body, **_: Any) -> dict[str, ComputeCluster]:
        try:
            return {ALL: ComputeCluster.model_validate(dict(body))}
        except ValidationError:
            return {}

    @index("modeldeployments")
    def modeldeployments_idx(body: kopf.Body, **_: Any) -> dict[str, ModelDeployment]:
        try:
            md = ModelDeployment.model_validate(dict(body))
        except ValidationError:
            return {}
        return {ALL: md} if md.spec.resources.gpu is not None else {}

    @kopf.index("tramontane.dev", "v1alpha1", "tenants", registry=registry, id=INDEX_IDS["tenants"])
    def tenants_idx(body: kopf.Body, name: str, **_: Any) -> dict[str, str]:
        try:
            tenant = Tenant.model_validate(dict(body))
        except ValidationError:
            return {}
        return {namespace: name for namespace in tenant.spec.namespaces}

    @index("finetunejobs")
    def adapters_idx(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
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

    def gpus_allocated_in(self, cluster: str) -> dict[str, int]:
        """GPUs all placed pools hold in `cluster`, per GPU type."""
        return gpu_allocations(self.modeldeployments.get(ALL, ())).get(cluster, {})

    def gpus_allocated(self, md: ModelDeployment) -> dict[str, dict[str, int]]:
        """GPUs other ModelDeployments hold, per cluster and GPU type."""
        if md.spec.resources.gpu is None:
            return {}
        return gpu_allocations(self.modeldeployments.get(ALL, ()), exclude=md)
