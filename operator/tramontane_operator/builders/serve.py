"""The Ray Serve application of a ModelDeployment pool (what goes into `serveConfigV2`).

Adapters given by `uri` are served as is; adapters given by `fineTuneJobRef` need the URI of
the FineTuneJob's output, which the caller supplies (`adapter_uris`: FineTuneJob name -> URI).
An adapter whose job has no output yet is left out and reported by `resolve_adapters`.

Every kept version of an adapter (`status.adapterVersions`, as this pass decided it: see
`reconcile/rollout.py`) is served under its own name, `<adapter>@<version>`, so versions load
side by side and moving traffic between them (weights, in the status only) changes nothing
here; the list changes only when a version is added or dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from tramontane_api.v1alpha1 import ModelDeployment
from tramontane_api.v1alpha1.modeldeployment import VERSION_SEPARATOR, adapter_version
from tramontane_operator.placement import PoolSize
from tramontane_workers.contract.serve_config import (
    AdapterSource,
    AutoscalingConfig,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
    application_name,
)

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}  # fmt: skip


def parse_quantity(text: str, field: str) -> float:
    """A Kubernetes quantity as a number ("500m" -> 0.5, "16Gi" -> 17179869184.0)."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, scale = text, 1
    try:
        return float(number) * scale
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a Kubernetes quantity") from None


def served_as(adapter: str, version: str) -> str:
    """The name the workers serve one version of `adapter` under."""
    return f"{adapter}{VERSION_SEPARATOR}{version}"


def ray_cpus(md: ModelDeployment) -> int:
    """Whole CPUs Ray sees in one worker pod (and one replica asks for): ceil of the request."""
    return max(1, math.ceil(parse_quantity(md.spec.resources.cpu, "spec.resources.cpu")))


@dataclass(frozen=True)
class ResolvedAdapters:
    served: list[AdapterSource]  # every kept version, by the name the workers serve it under
    unresolved: list[str]  # adapter names whose FineTuneJob output is not known yet
    names: list[str] = field(default_factory=list)  # adapter names clients can call now


def resolve_adapters(
    md: ModelDeployment, adapter_uris: Mapping[str, str] | None = None
) -> ResolvedAdapters:
    """The adapters a pool can serve now; `adapter_uris`: FineTuneJob name -> output URI.
    Each adapter's kept versions come from `md.status.adapterVersions`; an adapter with none
    yet serves the version its spec names."""
    uris = adapter_uris or {}
    kept = {r.name: r.versions for r in (md.status.adapter_versions if md.status else None) or []}
    served: list[AdapterSource] = []
    unresolved: list[str] = []
    names: list[str] = []
    for adapter in md.spec.adapters or []:
        uri = adapter.uri
        if uri is None and adapter.fine_tune_job_ref is not None:
            uri = uris.get(adapter.fine_tune_job_ref.name)
        versions = kept.get(adapter.name)
        if versions:
            served += [AdapterSource(name=v.served_as, uri=v.uri) for v in versions]
        elif uri is not None:
            version = adapter_version(uri)
            served.append(AdapterSource(name=served_as(adapter.name, version), uri=uri))
        else:
            unresolved.append(adapter.name)
            continue
        names.append(adapter.name)
    return ResolvedAdapters(served, unresolved, names)


def serve_app(
    md: ModelDeployment, pool: PoolSize, adapter_uris: Mapping[str, str] | None = None
) -> ServeAppConfig:
    """The Serve application for one pool of `md` sized `pool`."""
    spec = md.spec
    gpu = spec.resources.gpu
    if any(a.name == spec.model.name for a in spec.adapters or []):
        # Workers serve versions as `<adapter>@<version>`, so nothing clashes there; but
        # `<model>:<model>` beside `<model>` is a confusing model list: refused as before.
        raise ValueError(f"spec.adapters: adapter name {spec.model.name!r} equals spec.model.name")
    return ServeAppConfig(
        name=serve_app_name(md),
        route_prefix=f"/{_namespace(md)}/{md.metadata.name}",
        engine=EngineConfig(
            engine=spec.runtime.engine,
            model_uri=spec.model.source,
            served_model_name=spec.model.name,
            format=spec.model.format,
            dtype=spec.runtime.dtype,
            max_model_len=spec.runtime.max_model_len,
            tensor_parallel_size=spec.runtime.tensor_parallel_size,
            enable_tool_calling=spec.runtime.tool_calling,
            max_adapters_per_replica=spec.runtime.max_adapters_per_replica,
            adapters=resolve_adapters(md, adapter_uris).served,
        ),
        autoscaling=AutoscalingConfig(
            min_replicas=pool.min_replicas,
            max_replicas=pool.max_replicas,
            initial_replicas=pool.replicas,
            target_ongoing_requests=spec.scaling.target_ongoing_requests,
            downscale_delay_s=float(spec.scaling.scale_down_delay_seconds),
        ),
        resources=ReplicaResources(
            num_cpus=float(ray_cpus(md)), num_gpus=float(gpu.count if gpu else 0)
        ),
        max_ongoing_requests=max_ongoing_requests(spec.scaling.target_ongoing_requests),
    )


def _namespace(md: ModelDeployment) -> str:
    return md.metadata.namespace or "default"


def serve_app_name(md: ModelDeployment) -> str:
    """The Serve application of `md`'s pools (unique in a member cluster)."""
    return application_name(_namespace(md), md.metadata.name)


def max_ongoing_requests(target: float) -> int:
    """Requests one replica accepts at once: twice the autoscaling target, at least 16, so
    the autoscaler sees load building before replicas start queueing it away."""
    return max(16, math.ceil(2 * target))
