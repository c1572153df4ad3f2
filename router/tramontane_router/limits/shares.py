"""How router replicas split one global limit: Doorman-style capacity shares, no central server.

Pure functions, no I/O; `exchange.py` feeds them what every live replica last published.

**Targets** (`targets`): the limit is split max-min fairly by demand (water-filling): replicas
are served in order of increasing demand, each gets its demand or an equal split of what is
left, whichever is smaller. When total demand is below the limit, the leftover goes to the
replicas with demand in proportion to their demand, so an idle replica strands nothing: it
holds no more than it used, and a replica that becomes busy grows into what the others give
back. With no demand anywhere the limit is split equally, so the first request after a quiet
spell is admitted on any replica. Every replica with demand > 0 gets > 0 (for a limit > 0), and
the targets sum to the limit exactly, up to float rounding, never above it.

**Caps** (`next_cap`): a replica does not jump to its target, because the others may still
hold (and have admitted against) what the target assumes they give up. Each replica publishes
`(used, wanted, cap)`; from every live replica's last published view it computes its own next
cap with two rules:

- **shrink** (target below its cap): down to `max(used, target)`, at once. Never below what it
  already admitted in the window: those admissions count against the limit until they age out,
  so a busy replica's cap slides down as its window slides, reaching the target within one
  window. Meanwhile it admits against the target, not the published cap (`next_caps`):
  admitting against the published cap would re-admit what ages out, keep `used` at the cap,
  and the cap would never come down.
- **grow** (target above its cap): only into free capacity `free = limit - sum(all caps)`, and
  at most `free / n` per round, `n` the number of live replicas.

Safety: if the published caps sum to at most the limit, and in a round any subset of replicas
recomputes from the same published snapshot, the sum stays at most the limit: shrinkers only
lower their caps, and at most `n` growers each add at most `free / n`. A replica that does not
recompute keeps its cap. (The exchange makes every round read one snapshot before any replica
writes: see `exchange.py`.)

Convergence, with stable demand: shrinkers reach `max(used, target)` in one round and their
target within one window (as their admissions age out); each grower then takes `1/n` of the
free capacity per round, so the gap to the targets shrinks by at least a factor `(1 - 1/n)` a
round: with 3 replicas about 6 rounds to 90 %, with 5 about 11. A replica with demand and a
zero cap gets a non-zero cap in the first round in which anything is free.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R", bound=Hashable)


@dataclass(frozen=True)
class ReplicaView:
    """One replica's last published state for one global limit (all in the limit's units)."""

    used: float  # admitted in the window
    wanted: float  # demand, scaled to one window
    cap: float  # the cap it enforces


def targets(limit: float, wants: Mapping[R, float]) -> dict[R, float]:
    """Max-min fair split of `limit` by demand; leftover shared in proportion to demand
    (equally when nobody wants anything). Sums to at most `limit`."""
    limit = max(0.0, limit)
    if not wants:
        return {}
    demand = {r: max(0.0, w) for r, w in wants.items()}
    if not any(demand.values()):
        return {r: limit / len(demand) for r in demand}
    out = {r: 0.0 for r in demand}
    left = limit
    waiting = sorted((r for r in demand if demand[r] > 0), key=lambda r: demand[r])
    while waiting:
        level = left / len(waiting)
        r = waiting[0]
        if demand[r] > level:  # every remaining replica wants more than an equal split
            for r in waiting:
                out[r] = level
            left = 0.0
            break
        out[r] = demand[r]
        left -= demand[r]
        waiting.pop(0)
    if left > 0:  # everyone's demand met: share the rest in proportion to demand
        total = sum(demand.values())
        for r, d in demand.items():
            out[r] += left * d / total
    scale = sum(out.values())
    if scale > limit > 0:  # float rounding: never hand out more than the limit
        out = {r: v * limit / scale for r, v in out.items()}
    return out


def next_cap(me: R, limit: float, replicas: Mapping[R, ReplicaView]) -> float:
    """`me`'s next cap, given every live replica's last published view (`me` included)."""
    return next_caps(me, limit, replicas)[0]


def next_caps(me: R, limit: float, replicas: Mapping[R, ReplicaView]) -> tuple[float, float]:
    """`me`'s next cap to publish (`next_cap`) and the cap to admit against: the published
    one, or the target when shrinking. A shrinking replica publishes `max(used, target)`
    (its admissions count until they age out) but admits nothing new above its target: were
    it to admit against the published cap, what ages out of its window would be re-admitted,
    its `used` would stay at its cap, and the cap would never come down."""
    view = replicas[me]
    target = targets(limit, {r: v.wanted for r, v in replicas.items()})[me]
    if target <= view.cap:
        return min(view.cap, max(view.used, target)), target
    free = limit - sum(v.cap for v in replicas.values())
    if free <= 0:
        return view.cap, view.cap
    cap = min(target, view.cap + free / len(replicas))
    return cap, cap
