"""The cross-replica budget allocator (`tramontane_router.limits.shares`): hand-computed
targets and caps, and hypothesis runs of several replicas over many rounds.

The simulation is the exchange's model: each round every replica admits what it is asked for
up to its cap, counted over a sliding window of `WINDOW` rounds; then a random subset of the
replicas recomputes its cap from the views all replicas published at the end of the previous
round (the others keep theirs), and publishes.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tramontane_router.limits.shares import ReplicaView, next_cap, targets

EPS = 1e-6
WINDOW = 3  # rounds per sliding window in the simulation


# --------------------------------------------------------------------------- hand-computed
def test_targets_water_fill_when_demand_exceeds_limit() -> None:
    # 1000 split over 1600/300/100: c takes 100, b 300, a what is left.
    assert targets(1000, {"a": 1600, "b": 300, "c": 100}) == pytest.approx(
        {"a": 600, "b": 300, "c": 100}
    )
    # Two big ones above the equal split share what the small one leaves.
    assert targets(900, {"a": 1000, "b": 1000, "c": 100}) == pytest.approx(
        {"a": 400, "b": 400, "c": 100}
    )


def test_targets_leftover_goes_to_demand_and_idle_replicas_get_nothing() -> None:
    # demand 300 of 1000: 700 left, shared 2:1 like the demand.
    assert targets(1000, {"a": 200, "b": 100, "idle": 0}) == pytest.approx(
        {"a": 200 + 700 * 2 / 3, "b": 100 + 700 / 3, "idle": 0}
    )


def test_targets_with_no_demand_split_equally() -> None:
    assert targets(900, {"a": 0, "b": 0, "c": 0}) == pytest.approx({"a": 300, "b": 300, "c": 300})
    assert targets(900, {}) == {}
    assert targets(0, {"a": 5}) == {"a": 0}


def test_shrink_goes_to_target_but_never_below_used() -> None:
    views = {
        "a": ReplicaView(used=100, wanted=100, cap=900),
        "b": ReplicaView(used=0, wanted=900, cap=0),
    }
    # a's target is 100 (water-fill of 1000 over 100/900).
    assert next_cap("a", 1000, views) == pytest.approx(100)
    busy = {**views, "a": ReplicaView(used=700, wanted=100, cap=900)}
    assert next_cap("a", 1000, busy) == pytest.approx(700)


def test_grow_takes_at_most_free_over_live_replicas() -> None:
    views = {
        "a": ReplicaView(used=100, wanted=100, cap=400),
        "b": ReplicaView(used=0, wanted=900, cap=0),
        "c": ReplicaView(used=0, wanted=0, cap=300),
    }
    # free = 1000 - 700 = 300; b may take 300 / 3 = 100 this round.
    assert next_cap("b", 1000, views) == pytest.approx(100)
    # Nothing free: b keeps its cap.
    full = {**views, "c": ReplicaView(used=500, wanted=0, cap=600)}
    assert next_cap("b", 1000, full) == 0
    # Close to the target: growth stops at the target. b's target is 450 plus its 450/550 of
    # the 450 left over; free = 1000 - 900 = 100, a third of it would overshoot the target.
    near = {
        "a": ReplicaView(used=100, wanted=100, cap=100),
        "b": ReplicaView(used=0, wanted=450, cap=800),
        "c": ReplicaView(used=0, wanted=0, cap=0),
    }
    assert next_cap("b", 1000, near) == pytest.approx(450 + 450 * 450 / 550)


def test_simultaneous_growers_from_one_snapshot_do_not_overshoot() -> None:
    views = {r: ReplicaView(used=0, wanted=10_000, cap=0) for r in "abcde"}
    caps = {r: next_cap(r, 1000, views) for r in views}
    assert sum(caps.values()) <= 1000 + EPS
    assert all(c == pytest.approx(200) for c in caps.values())


# --------------------------------------------------------------------------- simulation
class Sim:
    """Replicas over rounds: admissions in a sliding window, caps published each round."""

    def __init__(self, n: int, limit: float, window: int = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self.caps = [0.0] * n
        self.windows: list[deque[float]] = [deque([0.0] * window, window) for _ in range(n)]
        self.admitted_total: deque[float] = deque([0.0] * window, window)

    def used(self, i: int) -> float:
        """Admitted in the window that ends with the last round."""
        return sum(self.windows[i])

    def staying(self, i: int) -> float:
        """Of that, what stays in the window that ends with the next round."""
        return sum(list(self.windows[i])[1:])

    def round(self, demand: list[float], recompute: list[bool]) -> None:
        admitted = 0.0
        for i, asked in enumerate(demand):  # admissions this round, within the cap
            take = max(0.0, min(asked, self.caps[i] - self.staying(i)))
            self.windows[i].append(take)
            admitted += take
        self.admitted_total.append(admitted)
        views = {
            i: ReplicaView(used=self.used(i), wanted=demand[i] * self.window, cap=self.caps[i])
            for i in range(len(demand))
        }
        new = [
            next_cap(i, self.limit, views) if recompute[i] else self.caps[i]
            for i in range(len(demand))
        ]
        self.caps = new


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[float, list[list[float]], list[list[bool]]]:
    n = draw(st.integers(1, 5))
    limit = draw(st.floats(1, 10_000, allow_nan=False))
    rounds = draw(st.integers(1, 30))
    per_round = st.lists(st.floats(0, 5_000, allow_nan=False), min_size=n, max_size=n)
    subset = st.lists(st.booleans(), min_size=n, max_size=n)
    return (
        limit,
        [draw(per_round) for _ in range(rounds)],
        [draw(subset) for _ in range(rounds)],
    )


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_caps_and_admissions_never_sum_above_limit(
    scenario: tuple[float, list[list[float]], list[list[bool]]],
) -> None:
    limit, rounds, subsets = scenario
    sim = Sim(len(rounds[0]), limit)
    for demand, recompute in zip(rounds, subsets, strict=True):
        sim.round(demand, recompute)
        assert sum(sim.caps) <= limit * (1 + EPS)
        assert all(c >= 0 for c in sim.caps)
        assert sum(sim.admitted_total) <= limit * (1 + EPS)


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.lists(st.floats(0, 3_000, allow_nan=False), min_size=5, max_size=5))
def test_stable_demand_converges(
    scenario: tuple[float, list[list[float]], list[list[bool]]], stable: list[float]
) -> None:
    """After any history, with demand held steady and every replica recomputing each round:
    every replica with demand has a non-zero cap within WINDOW + 2 rounds, and the caps sum
    to >= 90 % of the limit within WINDOW + 25 rounds when total demand exceeds it."""
    limit, rounds, subsets = scenario
    n = len(rounds[0])
    demand = stable[:n]
    sim = Sim(n, limit)
    for earlier, recompute in zip(rounds, subsets, strict=True):
        sim.round(earlier, recompute)
    everyone = [True] * n
    for _ in range(WINDOW + 2):
        sim.round(demand, everyone)
    for i, d in enumerate(demand):
        if d > 0:
            assert sim.caps[i] > 0, (i, sim.caps, demand)
    for _ in range(23):
        sim.round(demand, everyone)
        assert sum(sim.caps) <= limit * (1 + EPS)
    if sum(demand) * WINDOW > limit:
        assert sum(sim.caps) >= 0.9 * limit, (sim.caps, demand, limit)
    fair = targets(limit, {i: d * WINDOW for i, d in enumerate(demand)})
    for i in range(n):  # a replica never holds much more than its fair target for long
        assert sim.caps[i] <= max(fair[i], sim.used(i)) + EPS * limit


def test_demand_moving_between_replicas_never_overspends_the_window() -> None:
    """a saturates its cap, then all demand moves to b: b only gets what a's admissions free
    as they age out of the window, so what both admitted in any window stays within the limit,
    and b ends up with (nearly) the whole limit."""
    sim = Sim(2, 1000, window=10)
    for _ in range(40):
        sim.round([100, 0], [True, True])  # a steady 100 a round: the window full
    assert sim.caps[0] > 900
    for _ in range(40):
        sim.round([0, 1000], [True, True])
        assert sum(sim.admitted_total) <= 1000 + EPS
        assert sum(sim.caps) <= 1000 + EPS
    assert sim.caps[1] >= 900
