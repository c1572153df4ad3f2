"""Placement invariants over many seeded random situations: capacity respected, bounds kept,
only eligible clusters chosen, and stability — placing again from the result changes nothing
(the property that keeps pools from flapping between reconciles)."""

from __future__ import annotations

import random

import pytest
from tests.unit.test_placement import make_md

from tramontane_api.v1alpha1 import ModelDeployment
from tramontane_operator.placement import (
    REASON_INSUFFICIENT_CAPACITY,
    REASON_NO_FAILOVER_TARGET,
    ClusterView,
    PlacementDecision,
    candidates,
    desired_replicas,
    place,
)
from tramontane_operator.placement.eligibility import can_keep, can_take, replica_capacity

NAMES = ["a", "b", "c", "d", "e"]


Situation = tuple[ModelDeployment, list[ClusterView], dict[str, int], frozenset[str]]


def random_situation(rng: random.Random) -> Situation:
    """A deployment, up to five clusters in random states, where its pools are, what failed."""
    strategy = rng.choice(["Spread", "Failover"])
    replicas = rng.randint(0, 10)
    gpus = rng.randint(1, 4)
    placement: dict[str, object] = {"strategy": strategy, "maxClusters": rng.randint(1, 4)}
    if rng.random() < 0.5:
        placement["clusters"] = rng.sample(NAMES, rng.randint(1, len(NAMES)))
    md = make_md(
        {
            "resources": {"gpu": {"type": "H100", "count": gpus}},
            "scaling": {"replicas": replicas, "minReplicas": 0, "maxReplicas": 12},
            "placement": placement,
        }
    )
    clusters = []
    for name in rng.sample(NAMES, rng.randint(0, len(NAMES))):
        capacity = rng.choice([0, 4, 8, 16])
        clusters.append(
            ClusterView(
                name,
                gpus_capacity={"H100": capacity},
                gpus_allocated={"H100": rng.randint(0, capacity)},
                reachable=rng.random() > 0.2,
                kuberay_installed=rng.random() > 0.1,
                cordoned=rng.random() < 0.15,
            )
        )
    current = {n: rng.randint(0, 5) for n in rng.sample(NAMES, rng.randint(0, 2))}
    failed = frozenset(n for n in current if rng.random() < 0.2)
    return md, clusters, current, failed


@pytest.mark.parametrize("seed", range(400))
def test_placement_invariants(seed: int) -> None:
    rng = random.Random(seed)
    md, clusters, current, failed = random_situation(rng)
    decision = place(md, clusters, current, failed)
    total = desired_replicas(md)
    by_name = {c.name: c for c in candidates(md, clusters)}
    if not decision.placed:
        assert not any(can_take(md, c, failed) for c in by_name.values())
        return
    assert decision.total <= total
    if decision.reason == REASON_NO_FAILOVER_TARGET:
        assert list(decision.replicas) == [next(iter(current))]
    else:
        _check_eligible_and_within_capacity(md, decision, by_name, current, failed)
        assert decision.total + decision.shortfall == total
        assert (decision.reason == REASON_INSUFFICIENT_CAPACITY) <= (decision.shortfall > 0)
    if md.spec.placement.strategy == "Failover":
        assert len(decision.replicas) == 1
    else:
        assert len(decision.replicas) <= md.spec.placement.max_clusters
    for size in decision.sizes.values():
        assert size.min_replicas <= size.replicas <= size.max_replicas
        assert size.max_replicas >= 1
    # Stability: placing again from where the pools now are changes nothing.
    again = place(md, clusters, decision.replicas, failed)
    assert dict(again.replicas) == dict(decision.replicas)


def _check_eligible_and_within_capacity(
    md: ModelDeployment,
    decision: PlacementDecision,
    by_name: dict[str, ClusterView],
    current: dict[str, int],
    failed: frozenset[str],
) -> None:
    for name, n in decision.replicas.items():
        cluster = by_name[name]
        if name in current:
            assert can_keep(md, cluster, failed)
        else:
            assert can_take(md, cluster, failed)
        cap = replica_capacity(md, cluster)
        assert cap is None or n <= max(cap, current.get(name, 0))  # running pools never shrink
