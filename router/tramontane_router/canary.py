"""Adapter versions at the router: weighted choice, live figures, the local canary verdict.

The operator publishes each adapter's versions with their weights (`status.adapterVersions`,
in the routing table as `Versions`). Per request, `Canaries.choose` picks a version by
weight with smooth weighted round-robin (nginx's: deterministic, and any N consecutive
requests split within one request of the weights), per (Serve application, adapter).

Every attempt's outcome on a version is recorded (`record`): a sliding window (`window_s`,
10 s) of (time, failed, latency) per version; a failure is an endpoint fault (UNAVAILABLE,
INTERNAL, UNKNOWN), and latency is the time to the answer's first byte (a unary answer's
whole time). `check` (every second, and at once after each failure on a canary) judges every
canary against the stable version of its adapter with the rollout's analysis, once the canary
has `minRequests` in the window: error rate above `maxErrorRate`, or p99 above
`maxP99LatencyRatio` times the stable's. A breach *vetoes* the canary on this replica at once
and for as long as the table lists it as a canary: it gets 0 % here without waiting for the
operator, which reads the verdict from this replica's Lease (`report`,
`tramontane_api.rollouts`) and rolls it back for every replica.

A request whose attempt on a canary fails before any byte reached the caller is retried on
the stable version (`fallback`), so a bad canary fails no request that the stable would have
served.

An online check (`analysis.onlineCheck`, `probes.py`) vetoes through `veto` too; its probes
are not recorded here, so they are not in the figures.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tramontane_api.rollouts import VersionFigures, VersionKey

from . import observability as obs
from .table import Version, Versions

log = logging.getLogger(__name__)

WINDOW_S = 10.0


@dataclass
class _Window:
    """One version's attempts over the last `window_s`: (time, failed, latency_s)."""

    samples: collections.deque[tuple[float, bool, float]] = field(default_factory=collections.deque)
    errors: int = 0

    def add(self, at: float, failed: bool, latency_s: float) -> None:
        self.samples.append((at, failed, latency_s))
        self.errors += failed

    def trim(self, since: float) -> None:
        while self.samples and self.samples[0][0] < since:
            _, failed, _ = self.samples.popleft()
            self.errors -= failed

    @property
    def requests(self) -> int:
        return len(self.samples)

    def p99_s(self) -> float | None:
        ok = sorted(latency for _, failed, latency in self.samples if not failed)
        if not ok:
            return None
        return ok[min(len(ok) - 1, math.ceil(0.99 * len(ok)) - 1)]


@dataclass
class _Wrr:
    """Smooth weighted round-robin state of one (application, adapter)."""

    current: dict[str, int] = field(default_factory=dict)


class Canaries:
    def __init__(
        self, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.vetoed: dict[tuple[str, str], str] = {}  # (application, served_as) -> why
        self.vetoed_at: dict[tuple[str, str], float] = {}
        self.on_veto: Callable[[str, str, str], None] | None = None
        self._windows: dict[tuple[str, str], _Window] = {}
        self._wrr: dict[tuple[str, str], _Wrr] = {}
        self._watched: dict[str, Versions] = {}  # application -> an adapter with a canary

    # ------------------------------------------------------------------ the table
    def watch(self, versions: Iterable[Versions]) -> None:
        """The adapters with a canary now (from a new table): vetoes of versions no longer
        a canary are dropped, and so are the figures of versions no longer listed."""
        watched: dict[str, Versions] = {}
        live: set[tuple[str, str]] = set()
        canaries: set[tuple[str, str]] = set()
        for vs in versions:
            app = f"{vs.namespace}.{vs.deployment}"
            live |= {(app, v.served_as) for v in vs.versions}
            if vs.canary is not None:
                watched[f"{app}/{vs.adapter}"] = vs
                canaries.add((app, vs.canary.served_as))
        self._watched = watched
        for key in [k for k in self.vetoed if k not in canaries]:
            del self.vetoed[key]
            self.vetoed_at.pop(key, None)
        for key in [k for k in self._windows if k not in live]:
            del self._windows[key]

    # ------------------------------------------------------------------- choosing
    def choose(self, application: str, vs: Versions) -> tuple[Version, Version | None]:
        """The version for the next attempt, and the one to retry on if it fails (the stable,
        when the chosen is a canary)."""
        usable = [
            v for v in vs.versions if v.weight > 0 and (application, v.served_as) not in self.vetoed
        ]
        stable = vs.stable
        if not usable:
            usable = [stable] if stable is not None else list(vs.versions)
        chosen = usable[0] if len(usable) == 1 else self._next(application, vs.adapter, usable)
        fallback = stable if chosen.state == "Canary" and stable is not None else None
        return chosen, fallback

    def _next(self, application: str, adapter: str, usable: list[Version]) -> Version:
        state = self._wrr.setdefault((application, adapter), _Wrr())
        total = sum(v.weight for v in usable)
        current = {v.served_as: state.current.get(v.served_as, 0) + v.weight for v in usable}
        best = max(usable, key=lambda v: current[v.served_as])
        current[best.served_as] -= total
        state.current = current
        return best

    # ------------------------------------------------------------------- figures
    def record(self, application: str, version: Version, failed: bool, latency_s: float) -> None:
        now = self.clock()
        window = self._windows.setdefault((application, version.served_as), _Window())
        window.add(now, failed, latency_s)
        obs.VERSION_REQUESTS.labels(application, version.served_as,
                                    "error" if failed else "ok").inc()  # fmt: skip
        if failed and version.state == "Canary":
            self.check()  # a breach is acted on at once, not at the next second

    def check(self) -> None:
        """Judge every watched canary; veto those in breach."""
        since = self.clock() - self.window_s
        for window in self._windows.values():
            window.trim(since)
        for key, vs in self._watched.items():
            app = key.rpartition("/")[0]
            canary, stable = vs.canary, vs.stable
            if canary is None or (app, canary.served_as) in self.vetoed or vs.analysis is None:
                continue
            why = self._breach(app, vs, canary, stable)
            if why is not None:
                self.veto(app, canary.served_as, why)

    def veto(self, app: str, served_as: str, why: str) -> bool:
        """Veto a canary on this replica (sticky while it is a canary); False when it is no
        longer a canary of a watched adapter, or is vetoed already."""
        key = (app, served_as)
        is_canary = any(
            k.rpartition("/")[0] == app and vs.canary is not None
            and vs.canary.served_as == served_as
            for k, vs in self._watched.items()
        )  # fmt: skip
        if not is_canary or key in self.vetoed:
            return False
        self.vetoed[key] = why
        self.vetoed_at[key] = self.clock()
        obs.CANARY_VETOES.labels(app, served_as).inc()
        log.warning("canary %s of %s breached (%s): 0 %% on this replica", served_as, app, why)
        if self.on_veto is not None:
            self.on_veto(app, served_as, why)
        return True

    def online_checks(self) -> list[tuple[str, Versions, Version]]:
        """(application, versions, canary) of each canary with an online check, not vetoed."""
        out = []
        for key, vs in self._watched.items():
            app, canary = key.rpartition("/")[0], vs.canary
            if (
                canary is not None
                and vs.analysis is not None
                and vs.analysis.online_check is not None
                and (app, canary.served_as) not in self.vetoed
            ):
                out.append((app, vs, canary))
        return out

    def _breach(
        self, app: str, vs: Versions, canary: Version, stable: Version | None
    ) -> str | None:
        analysis = vs.analysis
        seen = self._windows.get((app, canary.served_as))
        if analysis is None or seen is None or seen.requests < analysis.min_requests:
            return None
        rate = seen.errors / seen.requests
        if rate > analysis.max_error_rate:
            return (
                f"error rate {rate:.1%} ({seen.errors} of {seen.requests}) above "
                f"{analysis.max_error_rate:.1%}"
            )
        base = self._windows.get((app, stable.served_as)) if stable is not None else None
        if base is None or base.requests < analysis.min_requests:
            return None
        mine, theirs = seen.p99_s(), base.p99_s()
        if mine is not None and theirs:
            ratio = mine / theirs
            if ratio > analysis.max_p99_latency_ratio:
                return (
                    f"p99 latency {mine * 1000:.0f} ms is {ratio:.1f}x the stable's "
                    f"{theirs * 1000:.0f} ms"
                )
        return None

    def report(self) -> dict[VersionKey, VersionFigures]:
        """What this replica saw of the versions of adapters with a canary (for its Lease)."""
        since = self.clock() - self.window_s
        out: dict[VersionKey, VersionFigures] = {}
        for key, vs in self._watched.items():
            app = key.rpartition("/")[0]
            for v in vs.versions:
                window = self._windows.get((app, v.served_as))
                if window is not None:
                    window.trim(since)
                p99 = window.p99_s() if window is not None else None
                out[(vs.namespace, vs.deployment, v.served_as)] = VersionFigures(
                    requests=window.requests if window is not None else 0,
                    errors=window.errors if window is not None else 0,
                    p99_ms=round(p99 * 1000, 3) if p99 is not None else None,
                    breach=self.vetoed.get((app, v.served_as), ""),
                )
        return out

    def weights(self, application: str, vs: Versions) -> Mapping[str, int]:
        """The weights this replica routes by now (vetoed canaries at 0)."""
        return {
            v.served_as: 0 if (application, v.served_as) in self.vetoed else v.weight
            for v in vs.versions
        }
