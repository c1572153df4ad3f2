"""Reconcile of a ModelDeployment: desired children per placement, and status aggregated from
what KubeRay reports (statuses shaped like KubeRay v1.7.0's and checked against its CRD)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.unit.test_builders_rayservice import rayservice_validator
from tests.unit.test_placement import h100, make_md, spec_for

from tramontane_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from tramontane_api.validate import validate_object
from tramontane_operator.builders import BuildSettings, build_rayservice
from tramontane_operator.placement import PlacementDecision, place
from tramontane_operator.reconcile import (
    ObservedPool,
    Reason,
    compute_status,
    current_replicas,
    desired_children,
    failed_clusters,
    invalid_spec_status,
    status_changed,
)

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
SETTINGS = BuildSettings(worker_image="w:1", hub_cluster="a")
CLUSTERS = [h100("a", grpc_endpoint="a.example.com:443"), h100("b"), h100("c")]
VIEWS = {c.name: c for c in CLUSTERS}


def kuberay_status(
    app: str | None = "RUNNING",
    ready: int = 2,
    *,
    serving: bool = True,
    upgrading: bool = False,
    message: str = "",
    cluster_state: str = "ready",
) -> dict[str, Any]:
    """A RayService `status` as KubeRay v1.7.0 writes it for the application `chat`."""
    conditions = [
        {
            "type": "Ready",
            "status": "True" if serving else "False",
            "reason": "NonZeroServeEndpoints" if serving else "ZeroServeEndpoints",
            "message": "",
            "lastTransitionTime": "2026-11-26T11:00:00Z",
        },
        {
            "type": "UpgradeInProgress",
            "status": "True" if upgrading else "False",
            "reason": "PendingRayClusterExists" if upgrading else "NoPendingCluster",
            "message": "pending cluster starting" if upgrading else "",
            "lastTransitionTime": "2026-11-26T11:00:00Z",
        },
    ]
    active: dict[str, Any] = {
        "rayClusterName": "chat-abcde",
        "rayClusterStatus": {"readyWorkerReplicas": ready, "state": cluster_state},
    }
    if app is not None:
        active["applicationStatuses"] = {
            "team-a.chat": {  # the Serve application: <namespace>.<name>
                "status": app,
                "message": message,
                "serveDeploymentStatuses": {"MistralServer": {"status": "HEALTHY"}},
            }
        }
    return {
        "conditions": conditions,
        "serviceStatus": "Running" if serving else "",
        "numServeEndpoints": ready,
        "activeServiceStatus": active,
    }


def observed_rs(
    md: ModelDeployment,
    cluster: str,
    *,
    lag: bool = False,
    no_conditions: bool = False,
    **status: Any,
) -> dict[str, Any]:
    """Our RayService as read back with a KubeRay status; `lag`: KubeRay is a generation
    behind; `no_conditions`: an older KubeRay that only writes `serviceStatus`."""
    rs = build_rayservice(md, VIEWS[cluster], 2, SETTINGS, None)
    rs["metadata"]["generation"] = 3
    rs["status"] = kuberay_status(**status)
    rs["status"]["observedGeneration"] = 2 if lag else 3
    if no_conditions:
        del rs["status"]["conditions"]
    return rs


def condition(status: ModelDeploymentStatus, type_: str) -> tuple[str, str]:
    found = [c for c in status.conditions or [] if c.type == type_]
    assert len(found) == 1, type_
    return found[0].status, found[0].reason


def test_kuberay_status_fixture_is_valid_for_kuberay() -> None:
    md = make_md()
    variants: list[dict[str, Any]] = [
        {},
        {"app": "DEPLOY_FAILED", "serving": False},
        {"upgrading": True},
        {"lag": True, "no_conditions": True},
    ]
    for kwargs in variants:
        assert rayservice_validator().validate(observed_rs(md, "a", **kwargs)) == []


def test_desired_children_one_rayservice_per_placed_cluster() -> None:
    md = make_md(spec_for("Spread", 5, maxClusters=2))
    decision = place(md, CLUSTERS)
    children = desired_children(md, decision, VIEWS, SETTINGS, "t")
    assert list(children) == ["a", "b"]
    replicas = [
        c["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] for c in children.values()
    ]
    assert replicas == [3, 2]
    assert "ownerReferences" in children["a"]["metadata"]
    assert "ownerReferences" not in children["b"]["metadata"]
    for child in children.values():
        assert rayservice_validator().validate(child) == []
    assert (
        desired_children(md, PlacementDecision({}, "NoEligibleCluster", ""), VIEWS, SETTINGS, None)
        == {}
    )


def test_desired_children_needs_a_view_of_every_placed_cluster() -> None:
    md = make_md()
    with pytest.raises(KeyError, match="'zz'"):
        desired_children(md, PlacementDecision({"zz": 1}, "Placed", ""), VIEWS, SETTINGS, None)


# Each case: pools observed in cluster "a" (None: RayService not created; "down": unreachable).
CASES: list[tuple[str, Any, str, int, dict[str, str]]] = [
    ("not created", None, "Progressing", 0,
     {"Ready": "False", "Progressing": "Creating", "Degraded": "Healthy"}),
    ("deploying", {"app": "DEPLOYING", "ready": 0, "serving": False}, "Progressing", 0,
     {"Ready": "PoolsNotReady", "Progressing": "Deploying"}),
    ("no app yet", {"app": None, "ready": 0, "serving": False}, "Progressing", 0,
     {"Progressing": "Deploying"}),
    ("healthy", {}, "Ready", 2,
     {"Ready": "PoolsReady", "Progressing": "Stable", "Degraded": "Healthy"}),
    ("upgrading", {"upgrading": True}, "Ready", 2,
     {"Ready": "PoolsReady", "Progressing": "Upgrading"}),
    ("short of min", {"ready": 1}, "Progressing", 1, {"Ready": "PoolsNotReady"}),
    ("patched, not yet seen", {"lag": True}, "Ready", 2,
     {"Ready": "PoolsReady", "Progressing": "Updating"}),
    ("old kuberay, running", {"no_conditions": True}, "Ready", 2, {"Ready": "PoolsReady"}),
    ("old kuberay, starting", {"no_conditions": True, "serving": False}, "Progressing", 0,
     {"Progressing": "Deploying"}),
    ("deploy failed", {"app": "DEPLOY_FAILED", "ready": 0, "serving": False,
                       "message": "ImportError"}, "Degraded", 0, {"Degraded": "PoolFailed"}),
    ("unhealthy", {"app": "UNHEALTHY", "ready": 1}, "Degraded", 0, {"Degraded": "PoolFailed"}),
    ("cluster failed", {"cluster_state": "failed"}, "Degraded", 0, {"Degraded": "PoolFailed"}),
    ("unreachable", "down", "Degraded", 0,
     {"Degraded": "ClusterUnreachable", "Ready": "PoolsNotReady"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "phase", "ready", "reasons"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_status_from_one_pool(
    observed: Any, phase: str, ready: int, reasons: dict[str, str]
) -> None:
    md = make_md(
        {"scaling": {"minReplicas": 2, "maxReplicas": 4}, "placement": {"clusters": ["a"]}}
    )
    decision = place(md, CLUSTERS)
    if observed == "down":
        pools = [ObservedPool("a", False, None, "a.example.com:443")]
    elif observed is None:
        pools = [ObservedPool("a", True, None, "a.example.com:443")]
    else:
        pools = [ObservedPool("a", True, observed_rs(md, "a", **observed), "a.example.com:443")]
    status = compute_status(md, decision, pools, None, T0)
    assert status.phase == phase
    assert status.ready_replicas == ready
    assert status.replicas == 2
    assert status.gpus == 2
    assert status.cluster_names == "a"
    assert status.observed_generation == 1
    (row,) = status.clusters or []
    assert (row.name, row.ray_service, row.desired_replicas, row.ready_replicas) == (
        "a",
        "chat",
        2,
        ready,
    )
    assert row.endpoint == "a.example.com:443"
    for type_, expected in reasons.items():
        got_status, got_reason = condition(status, type_)
        assert expected in (got_status, got_reason), (type_, got_status, got_reason)
    assert condition(status, "Placed") == ("True", "Placed")
    # What the operator writes validates against our CRD.
    body = md.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert validate_object(body) == []


def test_failed_pool_message_is_kept() -> None:
    md = make_md({"placement": {"clusters": ["a"]}})
    rs = observed_rs(md, "a", app="DEPLOY_FAILED", serving=False, message="ImportError: vllm")
    status = compute_status(md, place(md, CLUSTERS), [ObservedPool("a", True, rs)], None, T0)
    assert status.clusters is not None
    assert status.clusters[0].message == "Serve application DEPLOY_FAILED: ImportError: vllm"
    assert failed_clusters([ObservedPool("a", True, rs)], md) == {"a"}
    assert failed_clusters([ObservedPool("a", False, None)], md) == frozenset()


def test_two_pools_aggregate() -> None:
    md = make_md(spec_for("Spread", 5, maxClusters=2))
    decision = place(md, CLUSTERS)
    pools = [
        ObservedPool("a", True, observed_rs(md, "a", ready=3)),
        ObservedPool("b", True, observed_rs(md, "b", ready=1, app="DEPLOYING", serving=False)),
        ObservedPool("zz-old", True, None),  # a cluster no longer placed is not reported
    ]
    status = compute_status(md, decision, pools, None, T0)
    assert status.replicas == 5
    assert status.ready_replicas == 3  # a deploying pool serves nothing yet
    assert status.cluster_names == "a,b"
    assert [c.name for c in status.clusters or []] == ["a", "b"]
    assert condition(status, "Progressing") == ("True", Reason.DEPLOYING)
    assert status.phase == "Progressing"


def test_unplaced_is_pending() -> None:
    md = make_md({"placement": {"clusters": ["a"]}})
    decision = place(md, [h100("a", reachable=False)])
    status = compute_status(md, decision, [], None, T0)
    assert status.phase == "Pending"
    assert condition(status, "Placed") == ("False", Reason.NO_ELIGIBLE_CLUSTER)
    assert condition(status, "Ready") == ("False", Reason.NOT_PLACED)
    assert status.clusters is None
    assert status.replicas == 0


def test_insufficient_capacity_is_degraded_while_serving() -> None:
    md = make_md({"scaling": {"replicas": 4, "maxReplicas": 4}, "placement": {"clusters": ["a"]}})
    decision = place(md, [h100("a", 8, 6)])
    assert decision.replicas == {"a": 2}
    status = compute_status(md, decision, [ObservedPool("a", True, observed_rs(md, "a"))], None, T0)
    assert condition(status, "Degraded") == ("True", Reason.INSUFFICIENT_CAPACITY)
    assert status.phase == "Degraded"


def test_pending_adapters_keep_progressing() -> None:
    md = make_md(
        {
            "adapters": [
                {"name": "x", "fineTuneJobRef": {"name": "job"}},
                {"name": "y", "uri": "s3://b/y"},
            ]
        }
    )
    decision = place(md, CLUSTERS)
    pools = [ObservedPool("a", True, observed_rs(md, "a", ready=1))]
    status = compute_status(md, decision, pools, None, T0)
    assert condition(status, "Progressing") == ("True", Reason.ADAPTERS_PENDING)
    assert status.adapters == ["y"]
    resolved = compute_status(md, decision, pools, None, T0, adapter_uris={"job": "s3://b/x"})
    assert condition(resolved, "Progressing") == ("False", Reason.STABLE)
    assert resolved.adapters == ["x", "y"]


def test_transition_times_kept_until_status_flips() -> None:
    md = make_md({"placement": {"clusters": ["a"]}})
    decision = place(md, CLUSTERS)
    deploying = [ObservedPool("a", True, observed_rs(md, "a", app="DEPLOYING", serving=False))]
    first = compute_status(md, decision, deploying, None, T0)
    again = compute_status(md, decision, deploying, first, T1)
    assert not status_changed(first, again)
    assert all(c.last_transition_time == T0 for c in again.conditions or [])
    ready = compute_status(md, decision, [ObservedPool("a", True, observed_rs(md, "a"))], again, T1)
    assert status_changed(again, ready)
    times = {c.type: c.last_transition_time for c in ready.conditions or []}
    assert times == {"Ready": T1, "Progressing": T1, "Degraded": T0, "Placed": T0}
    assert status_changed(None, ready)


def test_observed_generation_follows_the_spec() -> None:
    md = make_md(generation=7, spec={"placement": {"clusters": ["a"]}})
    status = compute_status(md, place(md, CLUSTERS), [], None, T0)
    assert status.observed_generation == 7
    assert {c.observed_generation for c in status.conditions or []} == {7}


def test_failover_is_recorded_once() -> None:
    md = make_md(spec_for("Failover", 2, clusters=["a", "b"]))
    before = compute_status(md, place(md, CLUSTERS), [], None, T0)
    md_placed = make_md(
        spec_for("Failover", 2, clusters=["a", "b"]),
        status=before.model_dump(mode="json", by_alias=True, exclude_none=True),
    )
    assert current_replicas(md_placed) == {"a": 2}
    down = [h100("a", reachable=False), h100("b")]
    decision = place(md, down, current=current_replicas(md_placed))
    moved = compute_status(md, decision, [ObservedPool("a", False, None)], before, T1)
    assert moved.last_failover_time == T1
    assert moved.cluster_names == "b"
    later = compute_status(md, decision, [], moved, T1 + timedelta(minutes=1))
    assert later.last_failover_time == T1


def test_current_replicas_without_status() -> None:
    assert current_replicas(make_md()) == {}


def test_invalid_spec_status_keeps_pools_and_fails() -> None:
    md = make_md({"placement": {"clusters": ["a"]}})
    previous = compute_status(md, place(md, CLUSTERS), [], None, T0)
    status = invalid_spec_status(
        3, "spec.scaling: minReplicas must not exceed maxReplicas", previous, T1
    )
    assert status.phase == "Failed"
    assert status.observed_generation == 3
    assert condition(status, "Placed") == ("False", Reason.INVALID_SPEC)
    assert condition(status, "Degraded") == ("True", Reason.INVALID_SPEC)
    assert status.clusters == previous.clusters
    placed = next(c for c in status.conditions or [] if c.type == "Placed")
    assert placed.message.startswith("spec.scaling")
    assert placed.last_transition_time == T1
    fresh = invalid_spec_status(1, "bad", None, T0)
    assert fresh.phase == "Failed"
    assert fresh.clusters is None


def test_failing_over_onto_a_smaller_cluster_is_degraded() -> None:
    md = make_md(spec_for("Failover", 4, clusters=["a", "b"]))
    decision = place(md, [h100("a", reachable=False), h100("b", 8, 6)], current={"a": 4})
    assert decision.reason == Reason.FAILED_OVER
    assert dict(decision.replicas) == {"b": 2}
    status = compute_status(md, decision, [ObservedPool("b", True, observed_rs(md, "b"))], None, T0)
    assert condition(status, "Degraded") == ("True", Reason.INSUFFICIENT_CAPACITY)
    assert condition(status, "Placed") == ("True", Reason.FAILED_OVER)
    assert status.last_failover_time == T0
