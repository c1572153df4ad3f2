"""Choosing an endpoint: load-aware power of two choices, locality tiers, outlier ejection.

Load of an endpoint is what this router has outstanding there, raised to what the workers'
`GetStats` last reported (running + waiting requests per replica, times the ready replicas)
when other routers load it more; divided by its ready replicas. Candidates are tiered: the
router's own region, then its own cloud, then anywhere. The first tier with an endpoint under
`room_per_replica` is used; when every tier is full, all healthy endpoints compete. Within the
chosen set, two are sampled at random and the less loaded wins (Mitzenmacher's power of two
choices: near-best balance without herding onto one "least loaded" endpoint).

Outlier detection as Envoy does it: `eject_after` consecutive failures eject an endpoint for
`eject_base_s` x 2^(ejections so far), capped at `eject_max_s`; a success resets the count.
When every candidate is ejected, all are used (Envoy's panic mode): failing fast on a guess
would turn a blip into an outage.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from .table import Endpoint

EndpointKey = tuple[str, str]


@dataclass
class EndpointState:
    outstanding: int = 0
    reported_per_replica: float = 0.0  # running + waiting on one replica (GetStats)
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


@dataclass(frozen=True)
class BalancerSettings:
    region: str | None = None
    cloud: str | None = None
    room_per_replica: float = 8.0
    eject_after: int = 5
    eject_base_s: float = 10.0
    eject_max_s: float = 300.0


class Balancer:
    def __init__(
        self,
        settings: BalancerSettings | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or BalancerSettings()
        self._rng = rng or random.Random()
        self._clock = clock
        self.states: dict[EndpointKey, EndpointState] = {}
        self.on_eject: Callable[[Endpoint, float], None] | None = None

    def state(self, endpoint: Endpoint) -> EndpointState:
        found = self.states.get(endpoint.key)
        if found is None:
            found = self.states[endpoint.key] = EndpointState()
        return found

    def load(self, endpoint: Endpoint) -> float:
        s = self.state(endpoint)
        replicas = max(endpoint.ready_replicas, 1)
        return max(float(s.outstanding), s.reported_per_replica * replicas) / replicas

    def healthy(self, endpoint: Endpoint) -> bool:
        return self.state(endpoint).ejected_until <= self._clock()

    def pick(
        self, endpoints: Sequence[Endpoint], exclude_clusters: Collection[str] = ()
    ) -> Endpoint | None:
        """The endpoint for the next attempt, avoiding clusters already tried; None if no
        candidate is left."""
        candidates = [e for e in endpoints if e.cluster not in exclude_clusters]
        if not candidates:
            return None
        healthy = [e for e in candidates if self.healthy(e)] or candidates  # panic: use all
        room = self.settings.room_per_replica
        for tier in self._tiers(healthy):
            with_room = [e for e in tier if self.load(e) < room]
            if with_room:
                return self._two_choices(with_room)
        return self._two_choices(healthy)

    def _tiers(self, endpoints: Sequence[Endpoint]) -> list[list[Endpoint]]:
        region, cloud = self.settings.region, self.settings.cloud
        if region is None and cloud is None:
            return [list(endpoints)]
        tiers: list[list[Endpoint]] = [[], [], []]
        for e in endpoints:
            if region is not None and e.region == region and (cloud is None or e.cloud == cloud):
                tiers[0].append(e)
            elif cloud is not None and e.cloud == cloud:
                tiers[1].append(e)
            else:
                tiers[2].append(e)
        return [t for t in tiers if t]

    def _two_choices(self, endpoints: Sequence[Endpoint]) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = self._rng.sample(list(endpoints), 2)
        return a if self.load(a) <= self.load(b) else b

    # ----------------------------------------------------------------------- bookkeeping
    def started(self, endpoint: Endpoint) -> None:
        self.state(endpoint).outstanding += 1

    def finished(self, endpoint: Endpoint, ok: bool | None) -> None:
        """`ok`: True on success, False on an endpoint failure (unreachable, unavailable,
        internal error), None when the outcome says nothing of the endpoint (the caller
        cancelled, the request was invalid)."""
        s = self.state(endpoint)
        s.outstanding = max(0, s.outstanding - 1)
        if ok is True:
            s.consecutive_failures = 0
            if s.ejected_until <= self._clock():
                s.ejections = 0
        elif ok is False:
            s.consecutive_failures += 1
            if s.consecutive_failures >= self.settings.eject_after:
                self._eject(endpoint, s)

    def _eject(self, endpoint: Endpoint, s: EndpointState) -> None:
        cfg = self.settings
        duration = min(cfg.eject_base_s * (2**s.ejections), cfg.eject_max_s)
        s.ejected_until = self._clock() + duration
        s.ejections += 1
        s.consecutive_failures = 0
        if self.on_eject is not None:
            self.on_eject(endpoint, duration)

    def report_stats(self, endpoint: Endpoint, running: int, waiting: int) -> None:
        self.state(endpoint).reported_per_replica = float(running + waiting)

    def retain(self, keys: Collection[EndpointKey]) -> None:
        """Forget endpoints no longer in the table (their outstanding calls finish anyway)."""
        for key in [k for k in self.states if k not in keys]:
            if self.states[key].outstanding == 0:
                del self.states[key]
