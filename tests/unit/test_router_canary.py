"""The router's `Canaries` on a fake clock: the weighted choice, the window, the verdicts."""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from tramontane_api.v1alpha1.modeldeployment import RolloutAnalysis
from tramontane_router.canary import Canaries
from tramontane_router.table import Version, Versions

APP = "acme-ml.chat"
STABLE = Version("support@aaaa0000", "aaaa0000", 90, "Stable")
CANARY = Version("support@bbbb0000", "bbbb0000", 10, "Canary")
ANALYSIS = RolloutAnalysis(max_error_rate=0.05, max_p99_latency_ratio=2.0, min_requests=20)


def versions(canary_weight: int = 10, analysis: RolloutAnalysis | None = ANALYSIS) -> Versions:
    return Versions(
        "support", "acme-ml", "chat",
        (Version(CANARY.served_as, CANARY.version, canary_weight, "Canary"),
         Version(STABLE.served_as, STABLE.version, 100 - canary_weight, "Stable")),
        analysis,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def canaries() -> tuple[Canaries, Clock]:
    clock = Clock()
    made = Canaries(window_s=10.0, clock=clock)
    made.watch([versions()])
    return made, clock


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 99), st.integers(1, 400))
def test_smooth_weighted_round_robin_splits_any_run_within_one(weight: int, n: int) -> None:
    made, _ = canaries()
    vs = versions(weight)
    seen = collections.Counter(made.choose(APP, vs)[0].state for _ in range(n))
    assert abs(seen["Canary"] - n * weight / 100) <= 1


def test_canary_falls_back_to_the_stable() -> None:
    made, _ = canaries()
    picks = [made.choose(APP, versions(50)) for _ in range(4)]
    assert {chosen.state for chosen, _ in picks} == {"Canary", "Stable"}
    for chosen, fallback in picks:
        expected = STABLE.served_as if chosen.state == "Canary" else None
        assert (fallback.served_as if fallback else None) == expected


def test_errors_are_judged_only_from_min_requests_then_vetoed_at_once() -> None:
    made, clock = canaries()
    for _ in range(19):
        made.record(APP, CANARY, True, 0.01)  # 19 failures: under minRequests
    assert not made.vetoed
    made.record(APP, CANARY, True, 0.01)
    assert "error rate" in made.vetoed[(APP, CANARY.served_as)]  # at the 20th, no waiting
    assert all(made.choose(APP, versions())[0].state == "Stable" for _ in range(50))
    # Sticky while the table lists it as a canary, even once its errors left the window.
    clock.now += 60
    made.check()
    made.watch([versions()])
    assert made.vetoed
    # Gone once the operator's rollback reaches the table.
    made.watch([Versions("support", "acme-ml", "chat", (STABLE,), ANALYSIS)])
    assert not made.vetoed


def test_old_samples_leave_the_window() -> None:
    made, clock = canaries()
    for _ in range(5):
        made.record(APP, CANARY, True, 0.01)
    clock.now += 11
    for _ in range(40):
        made.record(APP, CANARY, False, 0.01)
    made.check()
    assert not made.vetoed  # 0 errors of 40 in the last 10 s


def test_p99_against_the_stable() -> None:
    made, _ = canaries()
    for _ in range(30):
        made.record(APP, STABLE, False, 0.010)
        made.record(APP, CANARY, False, 0.015)
    made.check()
    assert not made.vetoed  # 1.5x: within 2x
    for _ in range(30):
        made.record(APP, CANARY, False, 0.050)
    made.check()
    assert "p99 latency" in made.vetoed[(APP, CANARY.served_as)]


def test_no_analysis_no_verdict_and_report_for_the_lease() -> None:
    made, _ = canaries()
    made.watch([versions(analysis=None)])
    for _ in range(30):
        made.record(APP, CANARY, True, 0.01)
    assert not made.vetoed
    made.watch([versions()])
    made.check()
    report = made.report()
    canary = report[("acme-ml", "chat", CANARY.served_as)]
    assert (canary.requests, canary.errors) == (30, 30) and canary.breach.startswith("error")
    assert report[("acme-ml", "chat", STABLE.served_as)].requests == 0
