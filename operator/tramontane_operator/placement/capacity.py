"""GPU bookkeeping across ModelDeployments: what each cluster has handed out, per GPU type.

The runtime feeds `gpu_allocations` with every ModelDeployment it knows (their last written
status says where their pools are) and gives each `ClusterView` the allocations of the *other*
deployments, so a deployment never competes with itself for capacity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tramontane_operator.api.v1alpha1 import ModelDeployment


def _key(md: ModelDeployment) -> tuple[str, str]:
    return (md.metadata.namespace or "default", md.metadata.name)


def gpu_allocations(
    mds: Iterable[ModelDeployment], exclude: ModelDeployment | None = None
) -> dict[str, dict[str, int]]:
    """Cluster name -> GPU type -> GPUs requested by placed pools (desired replicas x GPUs).

    `exclude`: leave this deployment out (the one being placed).
    """
    skip = _key(exclude) if exclude is not None else None
    out: dict[str, dict[str, int]] = {}
    for md in mds:
        gpu = md.spec.resources.gpu
        if _key(md) == skip or gpu is None or gpu.count == 0 or md.status is None:
            continue
        for pool in md.status.clusters or []:
            per_type = out.setdefault(pool.name, {})
            per_type[gpu.type] = per_type.get(gpu.type, 0) + pool.desired_replicas * gpu.count
    return out


def gpu_summary(capacity: Mapping[str, int], allocated: Mapping[str, int]) -> str:
    """'allocated/capacity' per GPU type for display, e.g. 'A100-80GB 2/16, H100 0/8'."""
    types = sorted(set(capacity) | {t for t, n in allocated.items() if n})
    if not types:
        return "none"
    return ", ".join(f"{t} {allocated.get(t, 0)}/{capacity.get(t, 0)}" for t in types)
