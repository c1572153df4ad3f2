"""Adapter versions and canaries: every transition of the pure `step_rollouts`, and properties
over random sequences of spec changes, router figures and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tramontane_api.v1alpha1.modeldeployment import (
    AdapterRollout,
    AdapterVersions,
    RolloutAnalysis,
    RolloutStep,
    adapter_version,
)
from tramontane_operator.reconcile.rollout import (
    ADAPTER_PROMOTED,
    ADAPTER_ROLLED_BACK,
    CANARY_STARTED,
    CANARY_STEPPED,
    KEEP,
    Figures,
    Wanted,
    served_as,
    step_rollouts,
    wanted_adapters,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
V1, V2, V3 = "file:///a/v1", "file:///a/v2", "file:///a/v3"
ROLLOUT = AdapterRollout(
    steps=[RolloutStep(weight=10, hold_seconds=5), RolloutStep(weight=50, hold_seconds=5)],
    analysis=RolloutAnalysis(max_error_rate=0.05, max_p99_latency_ratio=2.0, min_requests=20),
)


def run(
    uri: str | None,
    prev: list[AdapterVersions] | None,
    at: float = 0.0,
    figures: dict[str, Figures] | None = None,
    rollout: AdapterRollout | None = ROLLOUT,
    pin: str | None = None,
) -> tuple[list[AdapterVersions] | None, list[str], bool]:
    out = step_rollouts(
        [Wanted("support", uri, rollout, pin)], prev, figures or {}, T0 + timedelta(seconds=at)
    )
    return out.versions, [e.reason for e in out.events], out.active


def weights(rows: list[AdapterVersions] | None) -> dict[str, tuple[str, int]]:
    assert rows is not None
    return {v.uri: (v.state, v.weight) for v in rows[0].versions}


def healthy(uri: str, n: int = 25) -> dict[str, Figures]:
    return {served_as("support", adapter_version(uri)): Figures(n, 0, 0.1)}


def stable_v1() -> list[AdapterVersions]:
    rows, _, _ = run(V1, None)
    assert rows is not None
    return rows


def canary_v2() -> list[AdapterVersions]:
    rows, reasons, active = run(V2, stable_v1(), at=1)
    assert reasons == [CANARY_STARTED] and active
    assert rows is not None
    return rows


def test_first_version_is_stable_at_100() -> None:
    rows = stable_v1()
    assert weights(rows) == {V1: ("Stable", 100)}
    assert rows[0].versions[0].served_as == f"support@{adapter_version(V1)}"


def test_unresolved_adapter_has_no_versions_yet() -> None:
    assert run(None, None)[0] is None


def test_new_version_without_rollout_takes_100_at_once() -> None:
    rows, _, active = run(V2, stable_v1(), rollout=None)
    assert weights(rows) == {V2: ("Stable", 100), V1: ("Previous", 0)}
    assert not active


def test_canary_steps_after_hold_and_min_requests_then_promotes() -> None:
    rows = canary_v2()
    assert weights(rows) == {V2: ("Canary", 10), V1: ("Stable", 90)}
    # held, but too few requests: waits
    same, reasons, _ = run(V2, rows, at=10, figures=healthy(V2, n=5))
    assert same == rows and reasons == []
    # enough requests, not held long enough: waits
    same, reasons, _ = run(V2, rows, at=3, figures=healthy(V2))
    assert same == rows
    rows, reasons, _ = run(V2, rows, at=7, figures=healthy(V2))
    assert reasons == [CANARY_STEPPED] and weights(rows) == {V2: ("Canary", 50), V1: ("Stable", 50)}
    rows, reasons, active = run(V2, rows, at=13, figures=healthy(V2))
    assert reasons == [ADAPTER_PROMOTED] and not active
    assert weights(rows) == {V2: ("Stable", 100), V1: ("Previous", 0)}


def test_error_breach_rolls_back_at_once_and_records_why() -> None:
    bad = {served_as("support", adapter_version(V2)): Figures(20, 5, 0.1)}
    rows, reasons, active = run(V2, canary_v2(), at=2, figures=bad)
    assert reasons == [ADAPTER_ROLLED_BACK] and not active
    assert weights(rows) == {V2: ("RolledBack", 0), V1: ("Stable", 100)}
    assert rows is not None and rows[0].last_rollback is not None
    assert "error rate 25.0%" in rows[0].last_rollback.reason


def test_errors_below_min_requests_are_not_judged() -> None:
    few = {served_as("support", adapter_version(V2)): Figures(5, 5, 0.1)}
    rows = canary_v2()
    assert run(V2, rows, at=2, figures=few)[0] == rows


def test_a_routers_verdict_rolls_back() -> None:
    verdict = {served_as("support", adapter_version(V2)): Figures(3, 3, None, "router a: x")}
    rows, reasons, _ = run(V2, canary_v2(), at=2, figures=verdict)
    assert reasons == [ADAPTER_ROLLED_BACK] and weights(rows)[V2] == ("RolledBack", 0)


def test_latency_breach_against_the_stable() -> None:
    figs = {
        served_as("support", adapter_version(V2)): Figures(30, 0, 0.5),
        served_as("support", adapter_version(V1)): Figures(300, 0, 0.1),
    }
    rows, reasons, _ = run(V2, canary_v2(), at=2, figures=figs)
    assert reasons == [ADAPTER_ROLLED_BACK]
    assert rows is not None and rows[0].last_rollback is not None
    assert "5.0x" in rows[0].last_rollback.reason


def test_a_rolled_back_version_is_not_rolled_out_again_until_the_spec_changes() -> None:
    bad = {served_as("support", adapter_version(V2)): Figures(20, 20, 0.1)}
    rows, _, _ = run(V2, canary_v2(), at=2, figures=bad)
    again, reasons, active = run(V2, rows, at=60, figures=healthy(V2, 100))
    assert weights(again) == weights(rows) and reasons == [] and not active
    assert again is not None and "was rolled back" in (again[0].message or "")
    fresh, reasons, _ = run(V3, again, at=61)
    assert reasons == [CANARY_STARTED] and weights(fresh)[V3] == ("Canary", 10)


def test_pin_is_the_manual_rollback_and_may_serve_a_rolled_back_version() -> None:
    rows, _, _ = run(V2, stable_v1(), rollout=None)  # v2 stable, v1 previous
    pinned, _, _ = run(V2, rows, pin=adapter_version(V1))
    assert weights(pinned) == {V2: ("Previous", 0), V1: ("Stable", 100)}
    unknown, _, _ = run(V2, rows, pin="00000000")
    assert weights(unknown) == weights(rows) and "not kept" in (unknown or [])[0].message  # type: ignore[operator]


def test_pin_during_a_canary_ends_it() -> None:
    rows, reasons, active = run(V2, canary_v2(), at=2, pin=adapter_version(V1))
    assert weights(rows) == {V2: ("RolledBack", 0), V1: ("Stable", 100)} and not active
    assert ADAPTER_ROLLED_BACK in reasons


def test_naming_a_previous_version_again_switches_at_once() -> None:
    rows, _, _ = run(V2, stable_v1(), rollout=None)
    back, _, active = run(V1, rows)  # even with a rollout: a kept version needs no canary
    assert weights(back) == {V2: ("Previous", 0), V1: ("Stable", 100)} and not active


def test_spec_back_to_the_stable_abandons_the_canary() -> None:
    rows, reasons, active = run(V1, canary_v2(), at=2)
    assert weights(rows) == {V2: ("RolledBack", 0), V1: ("Stable", 100)} and not active
    assert reasons == [ADAPTER_ROLLED_BACK]


def test_removing_the_rollout_promotes_the_canary() -> None:
    rows, reasons, _ = run(V2, canary_v2(), at=2, rollout=None)
    assert reasons == [ADAPTER_PROMOTED] and weights(rows)[V2] == ("Stable", 100)


def test_only_keep_versions_are_kept() -> None:
    rows = stable_v1()
    for i in range(6):
        rows, _, _ = run(f"file:///a/x{i}", rows, rollout=None)  # type: ignore[assignment]
    assert len(rows[0].versions) == KEEP
    assert rows[0].versions[0].state == "Stable"


# ------------------------------------------------------------------------ properties
URIS = [V1, V2, V3]
action = st.one_of(
    st.tuples(st.just("spec"), st.sampled_from(URIS), st.booleans()),
    st.tuples(st.just("pin"), st.sampled_from([None, *map(adapter_version, URIS)]), st.just(True)),
    st.tuples(st.just("figures"), st.integers(0, 60), st.integers(0, 60)),
    st.tuples(st.just("wait"), st.integers(0, 10), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=40))
def test_properties(actions: list[tuple[object, object, object]]) -> None:
    uri, rollout, pin = V1, True, None
    rows: list[AdapterVersions] | None = None
    t = 0.0
    figs: dict[str, Figures] = {}
    for kind, a, b in actions:
        if kind == "spec":
            uri, rollout = str(a), bool(b)
        elif kind == "pin":
            pin = a if isinstance(a, str) else None
        elif kind == "figures":
            n, errors = int(str(a)), int(str(b))
            figs = {served_as("support", adapter_version(u)): Figures(n, min(n, errors), 0.1)
                    for u in URIS}  # fmt: skip
        else:
            t += float(str(a))
        before = {v.version: v.state for v in rows[0].versions} if rows else {}
        rows, _, active = run(uri, rows, t, figs, ROLLOUT if rollout else None, pin)
        assert rows is not None
        versions = rows[0].versions
        assert sum(v.weight for v in versions) == 100
        assert sum(v.state == "Stable" for v in versions) == 1
        assert sum(v.state == "Canary" for v in versions) <= 1
        assert active == any(v.state == "Canary" for v in versions)
        assert len(versions) <= KEEP
        for v in versions:
            if v.state == "RolledBack":
                assert v.weight == 0
            if before.get(v.version) == "RolledBack" and v.state != "RolledBack":
                assert pin == v.version, "a rolled-back version came back without a pin"


def test_the_examples_fine_tune_job_becomes_a_canary_of_the_examples_deployment() -> None:
    import copy
    from pathlib import Path

    import yaml

    from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment
    from tramontane_operator.reconcile.finetunejob_deploy import adapters_with

    examples = Path(__file__).parents[2] / "examples"
    md = ModelDeployment.model_validate(
        yaml.safe_load((examples / "modeldeployment-mistral-7b-aks.yaml").read_text())
    )
    job = FineTuneJob.model_validate(
        yaml.safe_load((examples / "finetunejob-canary.yaml").read_text())
    )
    first = step_rollouts(wanted_adapters(md), None, {}, T0).versions
    adapters, outcome = adapters_with(job, md, "az://adapters/search/query-rewriter-v4")
    assert outcome.deployed and adapters is not None
    raw = copy.deepcopy(md.model_dump(by_alias=True, exclude_none=True, mode="json"))
    raw["spec"]["adapters"] = adapters
    out = step_rollouts(wanted_adapters(ModelDeployment.model_validate(raw)), first, {}, T0)
    assert out.active
    states = {v.uri: (v.state, v.weight) for v in (out.versions or [])[0].versions}
    assert states == {
        "az://adapters/search/query-rewriter-v4": ("Canary", 10),
        "az://adapters/search/query-rewriter-v3": ("Stable", 90),
    }
