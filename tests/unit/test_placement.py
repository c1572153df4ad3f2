"""Placement: eligibility, preference order and the Spread / Failover / Pinned strategies.

`make_md` builds a ModelDeployment from a spec patch; the builder and reconcile tests reuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from tests.conftest import EXAMPLES_DIR

from tramontane_api.v1alpha1 import ComputeCluster, ModelDeployment
from tramontane_api.v1alpha1.common import LabelSelector
from tramontane_operator.placement import (
    REASON_FAILOVER,
    REASON_INSUFFICIENT_CAPACITY,
    REASON_NO_ELIGIBLE_CLUSTER,
    REASON_NO_FAILOVER_TARGET,
    REASON_PINNED_CLUSTER_MISSING,
    REASON_PLACED,
    ClusterView,
    PoolSize,
    candidates,
    desired_replicas,
    gpu_allocations,
    gpu_summary,
    place,
    pool_sizes,
    selector_matches,
)
from tramontane_operator.placement.eligibility import can_keep, can_take, why_ineligible
from tramontane_operator.placement.strategies import even_split, fill

BASE_SPEC: dict[str, Any] = {
    "model": {"name": "mistral-7b", "source": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
    "resources": {"gpu": {"type": "H100", "count": 1}},
}


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_md(
    spec: Mapping[str, Any] | None = None,
    *,
    name: str = "chat",
    namespace: str = "team-a",
    uid: str | None = "uid-1",
    generation: int = 1,
    status: Mapping[str, Any] | None = None,
) -> ModelDeployment:
    """A ModelDeployment: BASE_SPEC deep-merged with `spec` (None values delete a key)."""
    merged = _merge(BASE_SPEC, spec or {})
    merged = {k: v for k, v in merged.items() if v is not None}
    body: dict[str, Any] = {
        "apiVersion": "tramontane.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": merged,
    }
    if uid:
        body["metadata"]["uid"] = uid
    if status is not None:
        body["status"] = dict(status)
    return ModelDeployment.model_validate(body)


def h100(name: str, capacity: int = 8, allocated: int = 0, **kw: Any) -> ClusterView:
    """A cluster with `capacity` H100s, `allocated` of them used by other deployments."""
    return ClusterView(
        name=name, gpus_capacity={"H100": capacity}, gpus_allocated={"H100": allocated}, **kw
    )


def spec_for(strategy: str, replicas: int, **placement: Any) -> dict[str, Any]:
    return {
        "scaling": {"replicas": replicas, "minReplicas": 0, "maxReplicas": max(replicas, 8)},
        "placement": {"strategy": strategy, **placement},
    }


# --------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"tier": "prod"}}, {"tier": "prod"}, True),
        ({"matchLabels": {"tier": "prod"}}, {"tier": "dev"}, False),
        ({"matchLabels": {"tier": "prod"}}, {}, False),
        ({"matchExpressions": [{"key": "z", "operator": "In", "values": ["a", "b"]}]},
         {"z": "b"}, True),
        ({"matchExpressions": [{"key": "z", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "z", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "z", "operator": "NotIn", "values": ["a"]}]},
         {"z": "a"}, False),
        ({"matchExpressions": [{"key": "z", "operator": "Exists"}]}, {"z": ""}, True),
        ({"matchExpressions": [{"key": "z", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "z", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "z", "operator": "DoesNotExist"}]}, {"z": "1"}, False),
        ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
         {"a": "1"}, False),
        ({}, {"anything": "x"}, True),
    ],
)  # fmt: skip
def test_selector_matches(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(LabelSelector.model_validate(selector), labels) is expected


def test_selector_sees_implied_cloud_and_region_labels() -> None:
    aks = ClusterView("aks", cloud="azure", region="westeurope", gpus_capacity={"H100": 8})
    paris = ClusterView("paris", cloud="onprem", region="paris", gpus_capacity={"H100": 8})
    md = make_md(
        {"placement": {"clusterSelector": {"matchLabels": {"tramontane.dev/cloud": "azure"}}}}
    )
    assert [c.name for c in candidates(md, [paris, aks])] == ["aks"]
    # An explicit label wins over the implied one.
    relabelled = ClusterView("x", labels={"tramontane.dev/cloud": "azure"}, cloud="onprem")
    assert relabelled.selector_labels["tramontane.dev/cloud"] == "azure"


def test_candidates_keep_named_order_and_skip_unknown_names() -> None:
    md = make_md({"placement": {"clusters": ["c", "missing", "a"]}})
    assert [c.name for c in candidates(md, [h100("a"), h100("b"), h100("c")])] == ["c", "a"]


def test_selected_candidates_prefer_free_capacity_then_name() -> None:
    md = make_md()
    clusters = [h100("a", 8, 6), h100("b", 8, 0), h100("c", 8, 0), h100("d", 4, 0)]
    assert [c.name for c in candidates(md, clusters)] == ["b", "c", "d", "a"]


def test_cpu_only_candidates_in_name_order() -> None:
    md = make_md({"resources": {"gpu": None}, "runtime": {"engine": "transformers"}})
    assert [c.name for c in candidates(md, [h100("b"), h100("a")])] == ["a", "b"]


@pytest.mark.parametrize(
    ("cluster", "failed", "keep", "take", "why"),
    [
        (h100("ok"), set(), True, True, ""),
        (h100("down", reachable=False), set(), False, False, "unreachable"),
        (h100("noray", kuberay_installed=False), set(), False, False, "KubeRay not installed"),
        (h100("bad"), {"bad"}, False, False, "pool failed"),
        (h100("cordoned", cordoned=True), set(), True, False, "cordoned"),
        (ClusterView("a100", gpus_capacity={"A100": 8}), set(), False, False, "no H100 GPUs"),
        (h100("full", 8, 8), set(), True, False, "0 H100 GPUs free, 1 needed per replica"),
    ],
)
def test_keep_and_take(
    cluster: ClusterView, failed: set[str], keep: bool, take: bool, why: str
) -> None:
    md = make_md()
    assert can_keep(md, cluster, frozenset(failed)) is keep
    assert can_take(md, cluster, frozenset(failed)) is take
    assert why_ineligible(md, cluster, frozenset(failed)) == why


def test_free_gpus_need_a_whole_replica() -> None:
    md = make_md({"resources": {"gpu": {"type": "H100", "count": 4}}})
    assert not can_take(md, h100("a", 8, 5), frozenset())
    assert can_take(md, h100("a", 8, 4), frozenset())


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [(5, 2, [3, 2]), (0, 3, [0, 0, 0]), (7, 3, [3, 2, 2]), (2, 4, [1, 1, 0, 0]), (3, 0, [])],
)
def test_even_split(total: int, parts: int, expected: list[int]) -> None:
    assert even_split(total, parts) == expected


@pytest.mark.parametrize(
    ("total", "caps", "expected"),
    [
        (5, [None, None], [3, 2]),
        (5, [1, None], [1, 4]),
        (6, [2, 1], [2, 1]),
        (7, [10, 2, 10], [3, 2, 2]),
        (0, [4, 4], [0, 0]),
        (4, [0, 0], [0, 0]),
    ],
)
def test_fill_respects_capacity(total: int, caps: list[int | None], expected: list[int]) -> None:
    assert fill(total, caps) == expected


def test_desired_replicas_is_replicas_else_min() -> None:
    assert desired_replicas(make_md({"scaling": {"replicas": 3, "maxReplicas": 5}})) == 3
    assert desired_replicas(make_md({"scaling": {"minReplicas": 2, "maxReplicas": 5}})) == 2
    assert desired_replicas(make_md({"scaling": {"minReplicas": 0, "maxReplicas": 5}})) == 0


def test_pool_sizes_split_bounds_like_replicas() -> None:
    md = make_md({"scaling": {"replicas": 5, "minReplicas": 3, "maxReplicas": 9}})
    assert pool_sizes(md, {"a": 3, "b": 2}) == {
        "a": PoolSize(replicas=3, min_replicas=2, max_replicas=5),
        "b": PoolSize(replicas=2, min_replicas=1, max_replicas=4),
    }
    # A share never has min > replicas or max < 1.
    md0 = make_md({"scaling": {"minReplicas": 0, "maxReplicas": 1}})
    assert pool_sizes(md0, {"a": 0, "b": 0})["b"] == PoolSize(0, 0, 1)


# --------------------------------------------------------------------------- Spread


@pytest.mark.parametrize(
    ("replicas", "max_clusters", "clusters", "expected", "reason"),
    [
        (5, 2, [h100("a"), h100("b")], {"a": 3, "b": 2}, REASON_PLACED),
        (5, 1, [h100("a"), h100("b")], {"a": 5}, REASON_PLACED),
        (1, 3, [h100("a"), h100("b")], {"a": 1}, REASON_PLACED),
        (5, 2, [h100("a", 8, 5), h100("b", 8, 0)], {"b": 3, "a": 2}, REASON_PLACED),
        (5, 2, [h100("a", 1), h100("b", 8)], {"b": 4, "a": 1}, REASON_PLACED),
        (6, 2, [h100("a", 2), h100("b", 1)], {"a": 2, "b": 1}, REASON_INSUFFICIENT_CAPACITY),
        (0, 2, [h100("a"), h100("b")], {"a": 0}, REASON_PLACED),
        (2, 2, [h100("a", reachable=False), h100("b")], {"b": 2}, REASON_PLACED),
        (2, 2, [h100("a", cordoned=True), h100("b")], {"b": 2}, REASON_PLACED),
    ],
)
def test_spread(
    replicas: int,
    max_clusters: int,
    clusters: list[ClusterView],
    expected: dict[str, int],
    reason: str,
) -> None:
    md = make_md(spec_for("Spread", replicas, maxClusters=max_clusters))
    decision = place(md, clusters)
    assert dict(decision.replicas) == expected
    assert list(decision.replicas) == list(expected)  # preference order
    assert decision.reason == reason
    assert set(decision.sizes) == set(expected)


def test_spread_is_stable_when_preferences_change() -> None:
    md = make_md(spec_for("Spread", 3, maxClusters=2))
    # Now c has the most free GPUs, but the running pools in a and b stay as they are.
    clusters = [h100("a", 8, 4), h100("b", 8, 4), h100("c", 8, 0)]
    decision = place(md, clusters, current={"b": 2, "a": 1})
    assert dict(decision.replicas) == {"b": 2, "a": 1}


def test_spread_replaces_only_the_lost_cluster() -> None:
    md = make_md(spec_for("Spread", 4, maxClusters=2))
    clusters = [h100("a", reachable=False), h100("b"), h100("c")]
    decision = place(md, clusters, current={"a": 2, "b": 2})
    assert dict(decision.replicas) == {"b": 2, "c": 2}


def test_spread_keeps_cordoned_current_cluster_but_places_nothing_new_there() -> None:
    md = make_md(spec_for("Spread", 4, maxClusters=2))
    clusters = [h100("a", cordoned=True), h100("b"), h100("c")]
    assert dict(place(md, clusters, current={"a": 2, "b": 2}).replicas) == {"a": 2, "b": 2}
    assert "a" not in place(md, clusters).replicas


def test_spread_shrinks_to_the_preferred_current_clusters() -> None:
    md = make_md(spec_for("Spread", 4, maxClusters=1, clusters=["a", "b"]))
    decision = place(md, [h100("a"), h100("b")], current={"a": 2, "b": 2})
    assert dict(decision.replicas) == {"a": 4}


def test_spread_avoids_failed_pool() -> None:
    md = make_md(spec_for("Spread", 2, maxClusters=1, clusters=["a", "b"]))
    decision = place(md, [h100("a"), h100("b")], current={"a": 2}, failed=frozenset({"a"}))
    assert dict(decision.replicas) == {"b": 2}


def test_spread_with_cpu_only_replicas_ignores_gpu_capacity() -> None:
    md = make_md(
        {
            "resources": {"gpu": None},
            "runtime": {"engine": "transformers"},
            **spec_for("Spread", 3, maxClusters=2),
        }
    )
    decision = place(md, [ClusterView("a"), ClusterView("b")])
    assert dict(decision.replicas) == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ([], "no ComputeCluster matches spec.placement"),
        (
            [h100("a", reachable=False), h100("b", 8, 8), h100("c", cordoned=True)],
            "no eligible cluster: a (unreachable), c (cordoned), b (0 H100 GPUs free, 1 needed "
            "per replica)",
        ),
    ],
)
def test_spread_without_eligible_cluster(clusters: list[ClusterView], message: str) -> None:
    decision = place(make_md(spec_for("Spread", 2)), clusters)
    assert not decision.placed
    assert decision.reason == REASON_NO_ELIGIBLE_CLUSTER
    assert decision.message == message


# --------------------------------------------------------------------------- Failover


def failover_md(replicas: int = 2) -> ModelDeployment:
    return make_md(spec_for("Failover", replicas, clusters=["primary", "secondary", "third"]))


@pytest.mark.parametrize(
    ("clusters", "current", "failed", "expected", "reason"),
    [
        ([h100("primary"), h100("secondary")], None, set(), {"primary": 2}, REASON_PLACED),
        (
            [h100("primary", reachable=False), h100("secondary")],
            None,
            set(),
            {"secondary": 2},
            REASON_PLACED,
        ),
        # The primary is back: the pool stays where it is (no flapping).
        ([h100("primary"), h100("secondary")], {"secondary": 2}, set(), {"secondary": 2},
         REASON_PLACED),
        ([h100("primary", reachable=False), h100("secondary")], {"primary": 2}, set(),
         {"secondary": 2}, REASON_FAILOVER),
        ([h100("primary"), h100("secondary")], {"primary": 2}, {"primary"}, {"secondary": 2},
         REASON_FAILOVER),
        ([h100("primary", kuberay_installed=False), h100("secondary", cordoned=True),
          h100("third")], {"primary": 2}, set(), {"third": 2}, REASON_FAILOVER),
        ([h100("primary", reachable=False), h100("secondary", reachable=False)],
         {"primary": 2}, set(), {"primary": 2}, REASON_NO_FAILOVER_TARGET),
        ([h100("primary", 1)], None, set(), {"primary": 1}, REASON_INSUFFICIENT_CAPACITY),
    ],
)  # fmt: skip
def test_failover(
    clusters: list[ClusterView],
    current: dict[str, int] | None,
    failed: set[str],
    expected: dict[str, int],
    reason: str,
) -> None:
    decision = place(failover_md(), clusters, current=current, failed=frozenset(failed))
    assert dict(decision.replicas) == expected
    assert decision.reason == reason


def test_failover_message_names_both_clusters() -> None:
    clusters = [h100("primary", reachable=False), h100("secondary")]
    decision = place(failover_md(), clusters, current={"primary": 2})
    assert decision.message == "moved from primary to secondary"


def test_failover_without_any_cluster_is_unplaced() -> None:
    decision = place(failover_md(), [h100("primary", reachable=False)])
    assert decision.replicas == {}
    assert decision.reason == REASON_NO_ELIGIBLE_CLUSTER
    assert "primary (unreachable)" in decision.message


def test_failover_when_the_current_cluster_leaves_the_placement() -> None:
    md = make_md(spec_for("Failover", 2, clusters=["secondary"]))
    decision = place(md, [h100("primary"), h100("secondary")], current={"primary": 2})
    assert dict(decision.replicas) == {"secondary": 2}
    assert decision.reason == REASON_FAILOVER


# --------------------------------------------------------------------------- Pinned


def test_pinned_places_on_every_named_cluster_even_unhealthy() -> None:
    md = make_md(spec_for("Pinned", 3, clusters=["a", "b"]))
    decision = place(md, [h100("a"), h100("b", reachable=False), h100("c")])
    assert dict(decision.replicas) == {"a": 2, "b": 1}
    assert decision.reason == REASON_PLACED
    assert decision.message == "pinned to a, b; unhealthy: b"


def test_pinned_ignores_cordon_but_never_over_commits() -> None:
    md = make_md(spec_for("Pinned", 4, clusters=["a"]))
    decision = place(md, [h100("a", 8, 2, cordoned=True)])
    assert dict(decision.replicas) == {"a": 4} and decision.reason == REASON_PLACED
    short = place(md, [h100("a", 8, 5)])  # 3 free
    assert dict(short.replicas) == {"a": 3} and short.reason == REASON_INSUFFICIENT_CAPACITY
    assert "placed 3 of 4 replicas" in short.message
    full = place(md, [h100("a", 2, 2)])
    assert not full.placed and full.reason == REASON_INSUFFICIENT_CAPACITY
    # What a pool runs counts as room for it: a full cluster never shrinks a running pool.
    running = place(md, [h100("a", 2, 2)], current={"a": 2})
    assert dict(running.replicas) == {"a": 2}


def test_pinned_reports_missing_clusters() -> None:
    md = make_md(spec_for("Pinned", 2, clusters=["a", "ghost"]))
    decision = place(md, [h100("a")])
    assert dict(decision.replicas) == {"a": 2}
    assert decision.reason == REASON_PINNED_CLUSTER_MISSING
    assert "not found: ghost" in decision.message
    nothing = place(make_md(spec_for("Pinned", 2, clusters=["ghost"])), [h100("a")])
    assert not nothing.placed
    assert nothing.reason == REASON_PINNED_CLUSTER_MISSING


def test_pinned_with_zero_replicas_still_creates_every_pool() -> None:
    md = make_md(spec_for("Pinned", 0, clusters=["a", "b"]))
    assert dict(place(md, [h100("a"), h100("b")]).replicas) == {"a": 0, "b": 0}


# --------------------------------------------------------------------------- GPU bookkeeping


def test_gpu_allocations_sum_other_deployments() -> None:
    status = {
        "clusters": [{"name": "a", "desiredReplicas": 2}, {"name": "b", "desiredReplicas": 1}]
    }
    one = make_md({"resources": {"gpu": {"type": "H100", "count": 2}}}, name="one", status=status)
    two = make_md(name="two", status={"clusters": [{"name": "a", "desiredReplicas": 3}]})
    cpu = make_md(
        {"resources": {"gpu": None}, "runtime": {"engine": "transformers"}},
        name="cpu",
        status={"clusters": [{"name": "a", "desiredReplicas": 9}]},
    )
    fresh = make_md(name="fresh")
    assert gpu_allocations([one, two, cpu, fresh]) == {"a": {"H100": 7}, "b": {"H100": 2}}
    assert gpu_allocations([one, two, cpu, fresh], exclude=one) == {"a": {"H100": 3}}


def test_gpu_summary() -> None:
    assert gpu_summary({"H100": 8, "A100-80GB": 16}, {"H100": 2}) == "A100-80GB 0/16, H100 2/8"
    assert gpu_summary({}, {}) == "none"


def test_cluster_view_from_example_compute_cluster() -> None:
    cc = ComputeCluster.model_validate(
        yaml.safe_load((EXAMPLES_DIR / "computecluster-aks-westeurope.yaml").read_text())
    )
    view = ClusterView.from_compute_cluster(
        cc, reachable=True, kuberay_installed=False, gpus_allocated={"H100": 3}
    )
    assert view.name == "aks-westeurope"
    assert view.in_cluster
    assert view.grpc_endpoint == "serve.westeurope.tramontane.example.com:443"
    assert view.free_gpus("H100") == 5
    assert view.free_gpus("L4") == 0
    assert view.selector_labels["tier"] == "production"
    assert not view.kuberay_installed


def test_a_recovered_cluster_with_a_stale_child_does_not_pull_the_pool_back() -> None:
    # Status says "secondary"; the old child in "primary" reappears when primary comes back.
    clusters = [h100("primary"), h100("secondary")]
    decision = place(failover_md(), clusters, current={"secondary": 2, "primary": 2})
    assert dict(decision.replicas) == {"secondary": 2}
    md = make_md(spec_for("Spread", 4, maxClusters=2, clusters=["a", "b", "c"]))
    spread = place(md, [h100("a"), h100("b"), h100("c")], current={"b": 2, "c": 2, "a": 2})
    assert dict(spread.replicas) == {"b": 2, "c": 2}


def test_a_running_pool_is_not_shrunk_when_others_took_its_gpus() -> None:
    # Other deployments' accounting says b is full, but 3 of our replicas run there.
    clusters = [h100("b", 8, 8), h100("c", 8, 0)]
    spread = make_md(spec_for("Spread", 4, maxClusters=2, clusters=["b", "c"]))
    assert dict(place(spread, clusters, current={"b": 3, "c": 1}).replicas) == {"b": 3, "c": 1}
    # Growing: b keeps what it runs, the new replicas go where GPUs are free.
    grown = make_md(spec_for("Spread", 8, maxClusters=2, clusters=["b", "c"]))
    assert dict(place(grown, clusters, current={"b": 3, "c": 1}).replicas) == {"b": 3, "c": 5}
    failover = make_md(spec_for("Failover", 4, clusters=["b", "c"]))
    decision = place(failover, clusters, current={"b": 3})
    assert dict(decision.replicas) == {"b": 3}
    assert decision.shortfall == 1


def test_a_pool_with_no_room_anywhere_stays_pending_rather_than_dropped() -> None:
    md = make_md(spec_for("Spread", 2, clusters=["b"]))
    decision = place(md, [h100("b", 8, 8)], current={"b": 0})
    assert dict(decision.replicas) == {"b": 0}
    assert decision.reason == REASON_INSUFFICIENT_CAPACITY
    assert decision.shortfall == 2
