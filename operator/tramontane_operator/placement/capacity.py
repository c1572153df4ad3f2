"""GPU bookkeeping across ModelDeployments: what each cluster has handed out, per GPU type.

The runtime feeds `gpu_allocations` with every ModelDeployment it knows (their last written
status says where their pools are) and gives each `ClusterView` the allocations of the *other*
deployments, so a deployment never competes with itself for capacity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tramontane_api.v1alpha1 import ModelDeployment


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
        if _key(md) == skip or md.status is None:
            continue
        pools = {pool.name: pool.desired_replicas for pool in md.status.clusters or []}
        for cluster, per_type in pool_gpus(md, pools).items():
            totals = out.setdefault(cluster, {})
            for gpu_type, n in per_type.items():
                totals[gpu_type] = totals.get(gpu_type, 0) + n
    return out


def pool_gpus(md: ModelDeployment, replicas: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Cluster name -> GPU type -> GPUs that `md`'s pools of `replicas` (per cluster) take."""
    gpu = md.spec.resources.gpu
    if gpu is None or gpu.count == 0:
        return {}
    return {cluster: {gpu.type: n * gpu.count} for cluster, n in replicas.items()}


def gpu_summary(capacity: Mapping[str, int], allocated: Mapping[str, int]) -> str:
    """'allocated/capacity' per GPU type for display, e.g. 'A100-80GB 2/16, H100 0/8'."""
    types = sorted(set(capacity) | {t for t, n in allocated.items() if n})
    if not types:
        return "none"
    return ", ".join(f"{t} {allocated.get(t, 0)}/{capacity.get(t, 0)}" for t in types)
