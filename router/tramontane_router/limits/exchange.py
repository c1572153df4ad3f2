"""`BudgetExchange`: router replicas agree their shares of each global limit through the hub.

Each router replica holds one Kubernetes `Lease` (coordination.k8s.io/v1) in the router's
namespace on the hub, `tramontane-router-<replica>` (the replica is the pod name), labelled
`app.kubernetes.io/managed-by: tramontane` and `app.kubernetes.io/component: router`, with
`spec.holderIdentity`, `renewTime`, `leaseDurationSeconds`, and in the annotation
`tramontane.dev/budget` its per-(tenant, limit) view as compact JSON:
`{"acme/tokens": [used, wanted, cap], ...}` (and, from the router, `tramontane.dev/rollouts`:
its figures of canary adapter versions, see `tramontane_api.rollouts`). For the per-minute
limits `wanted` is what was asked (admitted or refused) in the last window: the mean of the
last rounds' asks scaled to one window, so a replica with a request every few rounds reads as
wanting steadily; for
`concurrent` it is taken as reported (a level, not a rate), and `used` is what is in flight.

Rounds are aligned to the wall clock, `interval_s` apart (1 s): at the start of a round every
replica lists the router Leases (label selector); at its middle each reads its limiter's
demand, computes its next cap for every key with `shares.next_caps` from that snapshot, writes
its own Lease (create-or-patch) and, once the write succeeded, hands the caps to the limiter
(a shrinking replica publishes what its window still holds but admits against its target).
So, with clocks in step (NTP) and hub round trips well under half an interval, every replica
computes a round from the caps all replicas published in the previous one: the model under
which `shares` proves that the published caps never sum above the limit. A replica whose list
came back after the middle of the round (a slow hub) does not grow that round; shrinking is
always safe. The limiter enforces its cap against its own sliding window; nothing here runs
per request, and no request ever waits for the hub.

Failure behaviour, safe first:
- **A dead replica** (its Lease not renewed for `leaseDurationSeconds` plus the window, by
  the reader's clock) is left out: its cap is freed. By then it has admitted nothing for a
  whole window (see the next point), so what it admitted has aged out.
- **A replica cut off from the hub** (list or write fails) keeps its last caps for
  `leaseDurationSeconds` after its last successful write (the others still count them),
  then falls back to a cap of 0: it admits nothing new until it reaches the hub again (what it
  already admitted still counts in its window, and ages out before the others free its caps).
  Not "cap = what it used": re-set every round, that cap would re-admit whatever aged out of
  the window meanwhile, and those admissions would outlive its Lease. Keys it had no published
  cap for get 0 at once. If it was away longer than lease plus window, the others have freed
  its caps: it rejoins from 0. A replica that has never reached the hub admits nothing (for
  the keys it has seen).
- **A replica joining** (or rejoining from 0) publishes caps of 0 in its first round and grows
  from the next: a replica that does not yet see the others must not take the whole limit.
- Leases dead for `gc_after_s` (1 h) are deleted by whichever replica sees them.
- With no hub (local mode, one replica) no exchange runs: the limiter's caps stay at the
  full limit.

RBAC on the hub: `get`, `list`, `create`, `patch`, `delete` on `leases` in the router's
namespace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tramontane_api.rollouts import ROUTER_LEASE_LABELS
from tramontane_kube import LEASE, ApiError, KubeClient, NotFound, Unreachable
from tramontane_kube.times import micro_time, parse_time

from .shares import ReplicaView, next_caps
from .types import WINDOW_S, CapSink, Demand, DemandSource, LimitKey, LimitName

log = logging.getLogger(__name__)

_LIMIT_NAMES: dict[str, LimitName] = {
    "requests": "requests",
    "tokens": "tokens",
    "concurrent": "concurrent",
}

BUDGET_ANNOTATION = "tramontane.dev/budget"
LEASE_LABELS = ROUTER_LEASE_LABELS  # the operator lists them too (canary figures)


class Limiter(DemandSource, CapSink, Protocol):
    """The per-replica limiter, as the exchange sees it."""


def lease_name(replica: str) -> str:
    return f"tramontane-router-{replica}"


@dataclass(frozen=True)
class Peer:
    """Another replica's Lease, parsed."""

    replica: str
    renewed: float  # epoch seconds
    duration_s: float
    budget: dict[LimitKey, ReplicaView]


def encode_budget(views: Mapping[LimitKey, ReplicaView]) -> str:
    body = {f"{t}/{n}": [v.used, v.wanted, v.cap] for (t, n), v in sorted(views.items())}
    return json.dumps(body, separators=(",", ":"))


def decode_budget(text: str) -> dict[LimitKey, ReplicaView]:
    """Entries that do not parse are left out (the replica then counts as holding 0)."""
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    out: dict[LimitKey, ReplicaView] = {}
    for key, value in body.items() if isinstance(body, dict) else ():
        tenant, _, limit = str(key).rpartition("/")
        name = _LIMIT_NAMES.get(limit)
        if name is not None:
            with contextlib.suppress(TypeError, ValueError):
                used, wanted, cap = (float(x) for x in value)
                out[(tenant, name)] = ReplicaView(used, wanted, cap)
    return out


def parse_lease(obj: Mapping[str, Any]) -> Peer | None:
    spec = obj.get("spec") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        renewed = parse_time(str(spec["renewTime"]))
        return Peer(
            replica=str(spec["holderIdentity"]),
            renewed=renewed,
            duration_s=float(spec["leaseDurationSeconds"]),
            budget=decode_budget(str(annotations.get(BUDGET_ANNOTATION) or "{}")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _floor(value: float) -> float:
    """Caps are published and enforced rounded down (never above what was computed)."""
    return math.floor(max(0.0, value) * 1000) / 1000


class BudgetExchange:
    """Exchanges this replica's demand and caps with the other replicas through the hub."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        replica: str,
        limiter: Limiter,
        *,
        interval_s: float = 1.0,
        lease_duration_s: int = 10,
        window_s: float = WINDOW_S,
        gc_after_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        annotations: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.client = client  # public: tests swap it for one that cannot reach the hub
        self.namespace = namespace
        self.replica = replica
        self.limiter = limiter
        self.interval_s = interval_s
        self.lease_duration_s = lease_duration_s
        self.window_s = window_s
        self.gc_after_s = gc_after_s
        self.clock = clock
        self.annotations = annotations  # more the Lease carries (the canaries' figures)
        self.published: dict[LimitKey, ReplicaView] = {}  # what the hub holds for us
        self.last_ok: float | None = None  # monotonic time of the last successful write
        self.rounds = 0
        self._lease: dict[str, Any] | None = None
        self._asked: dict[LimitKey, collections.deque[float]] = {}  # per round, last window
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"budget:{self.replica}")

    async def stop(self) -> None:
        """Stop exchanging; the Lease stays (its admissions count until it is dead)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            now = self.clock()
            tick = (math.floor(now / self.interval_s) + 1) * self.interval_s
            await asyncio.sleep(tick - now)
            peers = await self.observe()
            middle = tick + self.interval_s / 2
            late = self.clock() > middle
            await asyncio.sleep(max(0.0, middle - self.clock()))
            try:
                await self.publish(peers, grow=not late)
            except Exception:  # never let one bad round end the exchange
                log.exception("budget exchange round failed")

    async def observe(self) -> dict[str, Peer] | None:
        """Every other replica's Lease that is not dead; None when the hub cannot be read."""
        try:
            items, _ = await self.client.list(LEASE, self.namespace, LEASE_LABELS)
        except (ApiError, Unreachable) as exc:
            log.warning("budget exchange: cannot list leases: %s", exc)
            return None
        now, peers = self.clock(), {}
        for obj in items:
            peer = parse_lease(obj)
            if peer is None or peer.replica == self.replica:
                continue
            dead_at = peer.renewed + peer.duration_s + self.window_s
            if now <= dead_at:
                peers[peer.replica] = peer
            elif now > dead_at + self.gc_after_s:
                name = str((obj.get("metadata") or {}).get("name"))
                with contextlib.suppress(ApiError, Unreachable):
                    await self.client.delete(LEASE, self.namespace, name)
        return peers

    async def publish(self, peers: Mapping[str, Peer] | None, *, grow: bool = True) -> bool:
        """Compute this replica's caps from `peers`, write its Lease, then apply the caps;
        on failure, keep or fall back as documented. True when the write succeeded."""
        self.rounds += 1
        demands = self.limiter.demands()
        if peers is None:
            self._cut_off(demands)
            return False
        mono = time.monotonic()
        rejoining = self.last_ok is None or mono - self.last_ok > self.lease_duration_s + (
            self.window_s
        )
        base = {} if rejoining else {k: v.cap for k, v in self.published.items()}
        # Joining (or back after the others freed our caps): announce ourselves with cap 0 and
        # grow from the next round, once every replica counts us among the live ones.
        grow = grow and not rejoining
        views: dict[LimitKey, ReplicaView] = {}
        enforced: dict[LimitKey, float] = {}  # at most the published cap (below it: shrinking)
        for d in demands:
            key: LimitKey = (d.tenant, d.limit)
            # A rate's demand is what was asked in an interval, scaled to one window; a
            # concurrency's is a level already.
            wanted = d.wanted if d.limit == "concurrent" else self._smoothed(key, d.wanted)
            mine = ReplicaView(d.used, wanted, base.get(key, 0.0))
            everyone = {self.replica: mine}
            for name, peer in peers.items():
                everyone[name] = peer.budget.get(key, ReplicaView(0.0, 0.0, 0.0))
            cap, admit = next_caps(self.replica, float(d.global_limit), everyone)
            cap = cap if grow else min(cap, mine.cap)
            views[key] = ReplicaView(d.used, mine.wanted, _floor(cap))
            enforced[key] = _floor(min(cap, admit))
        try:
            self._lease, _ = await self.client.apply(LEASE, self._desired(views), self._lease)
        except (ApiError, Unreachable) as exc:
            log.warning("budget exchange: cannot write lease: %s", exc)
            if isinstance(exc, NotFound):
                self._lease = None  # deleted under us: create it next round
            self._cut_off(demands)
            return False
        self.published, self.last_ok = views, mono
        self.limiter.set_caps(enforced)
        return True

    def _smoothed(self, key: LimitKey, asked: float) -> float:
        """A rate's demand: what was asked in the last window (the mean of the last rounds'
        asks, scaled to one window; fewer rounds while a key is new). One round's ask scaled
        by window / interval alone swings between 0 and a multiple of one request for a
        replica that gets a request every few rounds: at 0 its cap falls to 0, and what it
        regrows into is less than a request costs, so it never admits while others are busy."""
        rounds = max(1, round(self.window_s / self.interval_s))
        history = self._asked.get(key)
        if history is None:
            history = self._asked[key] = collections.deque(maxlen=rounds)
        history.append(asked)
        return sum(history) / len(history) * (self.window_s / self.interval_s)

    def _cut_off(self, demands: list[Demand]) -> None:
        """The hub was not reached this round: keep the last caps within the lease, else admit
        nothing new (cap 0)."""
        in_lease = self.last_ok is not None and (
            time.monotonic() - self.last_ok <= self.lease_duration_s
        )
        caps = {
            (d.tenant, d.limit): 0.0
            for d in demands
            if not in_lease or (d.tenant, d.limit) not in self.published
        }
        if caps:
            self.limiter.set_caps(caps)

    def _desired(self, views: Mapping[LimitKey, ReplicaView]) -> dict[str, Any]:
        return {
            "apiVersion": LEASE.api_version,
            "kind": LEASE.kind,
            "metadata": {
                "name": lease_name(self.replica),
                "namespace": self.namespace,
                "labels": dict(LEASE_LABELS),
                "annotations": {
                    **(self.annotations() if self.annotations is not None else {}),
                    BUDGET_ANNOTATION: encode_budget(views),
                },
            },
            "spec": {
                "holderIdentity": self.replica,
                "leaseDurationSeconds": self.lease_duration_s,
                "renewTime": micro_time(self.clock()),
            },
        }
