"""Tenant quotas: namespace ownership, usage, admission order and reasons, tenant status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment, Tenant
from tramontane_api.v1alpha1.tenant import Quotas, namespace_conflicts
from tramontane_operator.quotas import (
    Workload,
    admit,
    over_quota,
    queue_order,
    tenant_for_namespace,
    usage,
    workload_of_fine_tune_job,
    workload_of_model_deployment,
)
from tramontane_operator.reconcile.tenant import compute_tenant_status

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def tenant(name: str, namespaces: list[str], **quotas: Any) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": name, "generation": 1},
            "spec": {"namespaces": namespaces, "quotas": quotas},
        }
    )


def job(
    name: str, minutes: int, gpus: int = 0, priority: int = 0, admitted: bool = False
) -> Workload:
    return Workload(
        kind="FineTuneJob",
        namespace="team-a",
        name=name,
        created=T0 + timedelta(minutes=minutes),
        gpus={"H100": gpus} if gpus else {},
        priority=priority,
        admitted=admitted,
    )


def test_namespace_ownership_and_conflicts() -> None:
    a = tenant("a", ["shared", "a-only"])
    b = tenant("b", ["shared", "b-only"])
    assert tenant_for_namespace([b, a], "shared") is a  # first by name, whatever the order
    assert tenant_for_namespace([a, b], "b-only") is b
    assert tenant_for_namespace([a, b], "nobody") is None
    assert namespace_conflicts([a, b]) == {"shared": ["a", "b"]}


def test_workloads_from_resources() -> None:
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "m", "namespace": "team-a"},
            "spec": {
                "model": {"name": "m", "source": "hf://a/b"},
                "resources": {"gpu": {"type": "A100-80GB", "count": 2}},
                "scaling": {"minReplicas": 1, "maxReplicas": 3},
            },
        }
    )
    # A deployment reserves what it may scale up to.
    assert workload_of_model_deployment(md, T0).gpus == {"A100-80GB": 6}
    ftj = FineTuneJob.model_validate(
        {
            "metadata": {"name": "f", "namespace": "team-a"},
            "spec": {
                "baseModel": {"uri": "hf://a/b"},
                "trainingFiles": [{"uri": "file:///d.jsonl"}],
                "hyperparameters": {"trainingSteps": 10},
                "resources": {"workers": 2, "gpusPerWorker": 4, "gpuType": "H100"},
                "output": {"uri": "file:///out"},
                "priority": 7,
            },
        }
    )
    w = workload_of_fine_tune_job(ftj, T0, admitted=True, cluster="aks")
    assert (w.gpus, w.priority, w.key) == ({"H100": 8}, 7, "FineTuneJob/team-a/f")
    assert w.clusters == {"aks": {"H100": 8}}


def test_usage_counts_only_admitted() -> None:
    current = usage([job("a", 0, 4, admitted=True), job("b", 1, 4)])
    assert (current.gpus, current.fine_tune_jobs, current.total_gpus) == ({"H100": 4}, 1, 4)


def test_queue_order_priority_then_age() -> None:
    order = queue_order([job("old", 0), job("new-high", 5, priority=5), job("newer", 9)])
    assert [w.name for w in order] == ["new-high", "old", "newer"]


def test_admit_within_gpu_quota_queues_the_rest_with_reasons() -> None:
    quotas = Quotas(gpus={"H100": 8})
    result = admit(quotas, [job("running", 0, 4, admitted=True), job("a", 1, 4), job("b", 2, 4)])
    assert result.admitted == ("FineTuneJob/team-a/a",)
    assert result.queued == {"FineTuneJob/team-a/b": 1}
    assert result.reasons["FineTuneJob/team-a/b"] == "quota gpus.H100: needs 4, 8 of 8 in use"
    assert result.usage.gpus == {"H100": 8}


def test_best_effort_fifo_lets_a_small_job_pass() -> None:
    quotas = Quotas(gpus={"H100": 8})
    result = admit(
        quotas, [job("running", 0, 6, admitted=True), job("big", 1, 4), job("small", 2, 2)]
    )
    assert result.admitted == ("FineTuneJob/team-a/small",)
    assert result.queued == {"FineTuneJob/team-a/big": 1}


def test_concurrency_limit_and_positions() -> None:
    quotas = Quotas(max_concurrent_fine_tune_jobs=1)
    result = admit(quotas, [job("c", 3), job("a", 1), job("b", 2, priority=1)])
    assert result.admitted == ("FineTuneJob/team-a/b",)
    assert result.queued == {"FineTuneJob/team-a/a": 1, "FineTuneJob/team-a/c": 2}
    assert "maxConcurrentFineTuneJobs: 1 of 1 running" in result.reasons["FineTuneJob/team-a/a"]


def test_no_quota_means_unlimited() -> None:
    result = admit(Quotas(), [job(str(i), i, 100) for i in range(5)])
    assert len(result.admitted) == 5 and not result.queued


def test_model_deployment_count_limit() -> None:
    mds = [
        Workload("ModelDeployment", "team-a", f"m{i}", T0 + timedelta(minutes=i), admitted=i == 0)
        for i in range(3)
    ]
    result = admit(Quotas(max_model_deployments=2), mds)
    assert result.admitted == ("ModelDeployment/team-a/m1",)
    assert result.reasons["ModelDeployment/team-a/m2"] == "quota maxModelDeployments: 2 of 2 in use"


def test_over_quota_after_lowering() -> None:
    current = usage([job("a", 0, 6, admitted=True), job("b", 1, 0, admitted=True)])
    assert over_quota(Quotas(gpus={"H100": 4}, max_concurrent_fine_tune_jobs=1), current) == [
        "gpus.H100: 6 in use, quota 4",
        "maxConcurrentFineTuneJobs: 2 running, quota 1",
    ]


@pytest.mark.parametrize(
    ("quotas", "others", "phase", "reason"),
    [
        ({"gpus": {"H100": 8}}, [], "Active", "WithinQuota"),
        ({"gpus": {"H100": 2}}, [], "OverQuota", "OverQuota"),
        ({}, [["team-a"]], "Invalid", "NamespaceConflict"),
    ],
)
def test_tenant_status(
    quotas: dict[str, Any], others: list[list[str]], phase: str, reason: str
) -> None:
    me = tenant("me", ["team-a"], **quotas)
    everyone = [me, *(tenant(f"other{i}", ns) for i, ns in enumerate(others))]
    workloads = [
        Workload(
            "FineTuneJob",
            "team-a",
            "j",
            T0,
            {"H100": 4},
            admitted=True,
            clusters={"aks": {"H100": 4}},
        ),
        Workload("FineTuneJob", "team-a", "q", T0, {"H100": 4}),
    ]
    status = compute_tenant_status(me, workloads, everyone, T0)
    assert status.phase == phase
    ready = next(c for c in status.conditions or [] if c.type == "Ready")
    assert ready.reason == reason
    assert status.gpus_in_use == 4
    assert status.usage is not None and status.usage.per_cluster is not None
    assert status.usage.per_cluster[0].cluster == "aks"
    # The status validates against the generated CRD's status schema.
    from tramontane_api.validate import validate_object

    body = me.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["status"] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert validate_object(body) == []


def test_tenant_status_keeps_transition_time() -> None:
    me = tenant("me", ["team-a"])
    first = compute_tenant_status(me, [], [me], T0)
    me.status = first
    later = compute_tenant_status(me, [], [me], T0 + timedelta(hours=1))
    assert [c.last_transition_time for c in later.conditions or []] == [T0, T0]


def test_tenant_status_carries_the_routers_token_budget_over() -> None:
    """The routers write status.tokenBudget; the operator's status never clears it."""
    from tramontane_api.v1alpha1.tenant import TokenBudgetStatus

    me = tenant("me", ["team-a"], tokens_per_day=1000)
    budget = TokenBudgetStatus(day="2026-11-27", tokens_today=10, remaining_today=990,
                               month="2026-11", tokens_this_month=10)  # fmt: skip
    me.status = compute_tenant_status(me, [], [me], T0)
    me.status.token_budget = budget
    later = compute_tenant_status(me, [], [me], T0 + timedelta(hours=1))
    assert later.token_budget == budget
