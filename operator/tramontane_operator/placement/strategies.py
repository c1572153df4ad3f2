"""The placement strategies: Spread, Failover and Pinned.

`place` decides, from the ModelDeployment's placement and the clusters' state, how many
replicas run in which cluster. It is stable: a pool stays where it is as long as its cluster
can keep it, so a recovering cluster never pulls pools back and capacity changes elsewhere
never reshuffle a running placement.

Replica count: `scaling.replicas` when set, else `scaling.minReplicas`. With 0 replicas
(minReplicas 0) a pool is still placed, in one cluster (Spread, Failover) or every pinned
cluster, with 0 workers: its autoscaler starts workers when requests arrive.

Spread and Failover only use clusters that are reachable and have KubeRay; "stays
unreachable" is the runtime's call (its probe backs off before it reports a cluster down).
Pinned places on exactly the named clusters whatever their state (maxClusters does not
apply) and leaves it to the status to report them Degraded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tramontane_api.v1alpha1 import ModelDeployment

from .eligibility import can_keep, can_take, candidates, replica_capacity, why_ineligible
from .types import (
    REASON_FAILOVER,
    REASON_INSUFFICIENT_CAPACITY,
    REASON_NO_ELIGIBLE_CLUSTER,
    REASON_NO_FAILOVER_TARGET,
    REASON_PINNED_CLUSTER_MISSING,
    REASON_PLACED,
    ClusterView,
    PlacementDecision,
    PoolSize,
)


def desired_replicas(md: ModelDeployment) -> int:
    """Replicas to run in total: `scaling.replicas` if set, else `scaling.minReplicas`."""
    scaling = md.spec.scaling
    return scaling.replicas if scaling.replicas is not None else scaling.min_replicas


def even_split(total: int, parts: int) -> list[int]:
    """`total` in `parts` near-equal integers, the remainder going to the first parts."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def fill(total: int, capacities: Sequence[int | None]) -> list[int]:
    """Split `total` evenly, capped by each capacity (None: unbounded), overflow to the rest."""
    alloc = [0] * len(capacities)
    remaining = total
    while remaining > 0:
        open_ = [i for i, cap in enumerate(capacities) if cap is None or alloc[i] < cap]
        if not open_:
            break
        given = 0
        for i, want in zip(open_, even_split(remaining, len(open_)), strict=True):
            cap = capacities[i]
            give = want if cap is None else min(want, cap - alloc[i])
            alloc[i] += give
            given += give
        remaining -= given
        if given == 0:
            break
    return alloc


def pool_sizes(md: ModelDeployment, replicas: Mapping[str, int]) -> dict[str, PoolSize]:
    """Each cluster's share of minReplicas/maxReplicas, split like the replicas are."""
    scaling = md.spec.scaling
    names = list(replicas)
    mins = even_split(scaling.min_replicas, len(names))
    maxs = even_split(scaling.max_replicas, len(names))
    return {
        name: PoolSize(
            replicas=replicas[name],
            min_replicas=min(lo, replicas[name]),
            max_replicas=max(hi, replicas[name], 1),
        )
        for name, lo, hi in zip(names, mins, maxs, strict=True)
    }


def _decision(
    md: ModelDeployment, replicas: dict[str, int], reason: str, message: str
) -> PlacementDecision:
    return PlacementDecision(
        replicas, reason, message, pool_sizes(md, replicas), desired_replicas(md)
    )


def _unplaced(
    md: ModelDeployment, cands: Sequence[ClusterView], failed: frozenset[str]
) -> PlacementDecision:
    if not cands:
        message = "no ComputeCluster matches spec.placement"
    else:
        why = ", ".join(f"{c.name} ({why_ineligible(md, c, failed) or 'full'})" for c in cands)
        message = f"no eligible cluster: {why}"
    return PlacementDecision({}, REASON_NO_ELIGIBLE_CLUSTER, message)


def _room(md: ModelDeployment, cluster: ClusterView, running: int) -> int | None:
    """Replicas the pool may have in `cluster`: what fits in free GPUs, or what already runs
    there if more; None when unbounded (no GPUs requested)."""
    capacity = replica_capacity(md, cluster)
    return None if capacity is None else max(capacity, running)


def _capacity_note(total: int, placed: int) -> tuple[str, str]:
    if placed < total:
        return REASON_INSUFFICIENT_CAPACITY, f"placed {placed} of {total} replicas (free GPUs)"
    return REASON_PLACED, ""


def _spread(
    md: ModelDeployment,
    cands: Sequence[ClusterView],
    current: Mapping[str, int],
    failed: frozenset[str],
) -> PlacementDecision:
    total = desired_replicas(md)
    wanted = min(md.spec.placement.max_clusters, max(total, 1))
    by_name = {c.name: c for c in cands}
    holding = [by_name[n] for n in current if n in by_name and can_keep(md, by_name[n], failed)]
    # The replicas a pool runs now count as room for it: capacity never shrinks a running
    # pool (other deployments' pending pools wait instead). A pool with none running stays
    # only where a replica fits.
    room = {c.name: _room(md, c, current.get(c.name, 0)) for c in cands}
    kept = [c for c in holding if total == 0 or room[c.name] != 0][:wanted]
    fresh = [c for c in cands if c not in kept and can_take(md, c, failed)]
    chosen_set = {c.name for c in kept + fresh[: wanted - len(kept)]}
    chosen = [c for c in cands if c.name in chosen_set]
    if not chosen and holding:  # nowhere better: keep the pool, pending, rather than drop it
        name = holding[0].name
        return _decision(
            md,
            {name: current[name]},
            REASON_INSUFFICIENT_CAPACITY,
            f"no free GPUs; staying on {name}",
        )
    if not chosen:
        return _unplaced(md, cands, failed)
    caps = [room[c.name] for c in chosen]
    if (
        chosen_set == set(current)
        and sum(current.values()) == total
        and all(cap is None or current[c.name] <= cap for c, cap in zip(chosen, caps, strict=True))
    ):
        replicas = {c.name: current[c.name] for c in chosen}
    else:
        # Every chosen cluster fits a replica and there are no more of them than replicas,
        # so each gets at least one (or all get 0 when scaled to zero).
        replicas = dict(zip([c.name for c in chosen], fill(total, caps), strict=True))
    reason, note = _capacity_note(total, sum(replicas.values()))
    where = ", ".join(f"{n}={r}" for n, r in replicas.items())
    return _decision(md, replicas, reason, f"spread over {where}" + (f"; {note}" if note else ""))


def _failover(
    md: ModelDeployment,
    cands: Sequence[ClusterView],
    current: Mapping[str, int],
    failed: frozenset[str],
) -> PlacementDecision:
    total = desired_replicas(md)
    by_name = {c.name: c for c in cands}
    keepable = [by_name[n] for n in current if n in by_name and can_keep(md, by_name[n], failed)]
    first = next(iter(current), None)
    if keepable and keepable[0].name == first:
        here = keepable[0]
        return _one_cluster(md, here, total, current[here.name], REASON_PLACED, f"on {first}")
    if keepable:  # the main pool is lost but another current cluster still holds one
        here = keepable[0]
        moved = f"moved from {first} to {here.name}"
        return _one_cluster(md, here, total, current[here.name], REASON_FAILOVER, moved)
    target = next((c for c in cands if can_take(md, c, failed)), None)
    if target is not None and current:
        moved = f"moved from {', '.join(current)} to {target.name}"
        return _one_cluster(md, target, total, 0, REASON_FAILOVER, moved)
    if target is not None:
        return _one_cluster(md, target, total, 0, REASON_PLACED, f"on {target.name}")
    if not current:
        return _unplaced(md, cands, failed)
    name = next(iter(current))
    return _decision(
        md,
        {name: total},
        REASON_NO_FAILOVER_TARGET,
        f"{name} cannot keep the pool and no other cluster is eligible; staying",
    )


def _one_cluster(
    md: ModelDeployment, target: ClusterView, total: int, running: int, reason: str, message: str
) -> PlacementDecision:
    """All replicas on `target` (where `running` of them run now), as many as fit."""
    cap = _room(md, target, running)
    n = total if cap is None else min(total, cap)
    cap_reason, note = _capacity_note(total, n)
    if reason == REASON_PLACED:
        reason = cap_reason
    return _decision(md, {target.name: n}, reason, message + (f"; {note}" if note else ""))


def _pinned(
    md: ModelDeployment, clusters: Sequence[ClusterView], current: Mapping[str, int]
) -> PlacementDecision:
    """Exactly the named clusters, whatever their health; replicas still only where GPUs are
    free (what a pool runs counts as room for it): a pin never over-commits a cluster."""
    names = md.spec.placement.clusters or []
    known = {c.name: c for c in clusters}
    present = [n for n in names if n in known]
    missing = [n for n in names if n not in known]
    if not present:
        return PlacementDecision(
            {}, REASON_PINNED_CLUSTER_MISSING, f"pinned clusters not found: {', '.join(missing)}"
        )
    total = desired_replicas(md)
    rooms = [_room(md, known[n], current.get(n, 0)) for n in present]
    replicas = {n: r for n, r in zip(present, fill(total, rooms), strict=True) if r or not total}
    unhealthy = [n for n in present if not (known[n].reachable and known[n].kuberay_installed)]
    parts = [f"pinned to {', '.join(present)}"]
    if unhealthy:
        parts.append(f"unhealthy: {', '.join(unhealthy)}")
    reason, note = _capacity_note(total, sum(replicas.values()))
    if note:
        parts.append(note)
    if missing:
        parts.append(f"not found: {', '.join(missing)}")
        return _decision(md, replicas, REASON_PINNED_CLUSTER_MISSING, "; ".join(parts))
    return _decision(md, replicas, reason, "; ".join(parts))


def place(
    md: ModelDeployment,
    clusters: Sequence[ClusterView],
    current: Mapping[str, int] | None = None,
    failed: frozenset[str] = frozenset(),
) -> PlacementDecision:
    """Where `md`'s pools go.

    `current`: replicas per cluster where pools exist now, most authoritative first (the last
    written status, then children found that it does not list): when more pools exist than
    the strategy keeps, the first ones stay, so a recovered cluster whose stale child
    reappears does not pull the pool back. `failed`: clusters whose pool KubeRay reports as
    failed.
    """
    current = dict(current or {})
    strategy = md.spec.placement.strategy
    if strategy == "Pinned":
        return _pinned(md, clusters, current)
    cands = candidates(md, clusters)
    if strategy == "Failover":
        return _failover(md, cands, current, failed)
    return _spread(md, cands, current, failed)
