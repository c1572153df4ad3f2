"""Adapter versions and canary rollouts: the next `status.adapterVersions`, from the spec, the
last status and what the routers saw. Pure.

A version of an adapter is the short digest of its resolved URI (`adapter_version`), served
by the workers as `<adapter>@<version>` beside the other kept versions, so moving traffic
between versions never changes what a replica has loaded nor what a request in flight runs
on: weights live only in the status, which the routers read.

Per adapter, on every pass (`step_adapter`):
- its first version is `Stable` at 100 %;
- a new version without `rollout` becomes `Stable` at once (the old one `Previous`);
- a new version with `rollout` becomes the `Canary` at the first step's weight (the `Stable`
  keeps the rest). After a step's `holdSeconds`, and once the canary has served
  `analysis.minRequests` requests in the routers' window without a breach, the next step
  starts; after the last, the canary is promoted (`Stable` 100 %, the old one `Previous`);
- a breach (any router's own verdict, or the routers' figures summed here: the canary's
  error rate above `maxErrorRate`, or its p99 latency above `maxP99LatencyRatio` times the
  stable's, judged once it has `minRequests`) rolls it back at once: `RolledBack` at 0 %,
  the reason in `lastRollback`, a Warning Event;
- a `RolledBack` version is not rolled out again because the spec still (or again) names
  it: only a pin (`spec.adapters[].version`) serves it;
- the spec naming a kept `Previous` version again, or pinning a kept version, switches to it
  at once (the manual rollback), without analysis.
At most `KEEP` versions are kept per adapter (the stable and the canary always).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tramontane_api.rollouts import ROLLOUTS_ANNOTATION, decode_rollouts
from tramontane_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from tramontane_api.v1alpha1.modeldeployment import (
    AdapterRollback,
    AdapterRollout,
    AdapterVersion,
    AdapterVersions,
    AdapterVersionState,
    RolloutAnalysis,
    adapter_version,
)
from tramontane_kube.times import parse_time
from tramontane_operator.builders.serve import served_as

KEEP: Final = 3

ADAPTER_VERSION_SERVED: Final = "AdapterVersionServed"
CANARY_STARTED: Final = "CanaryStarted"
CANARY_STEPPED: Final = "CanaryStepped"
ADAPTER_PROMOTED: Final = "AdapterPromoted"
ADAPTER_ROLLED_BACK: Final = "AdapterRolledBack"
ADAPTER_VERSION_SWITCHED: Final = "AdapterVersionSwitched"


@dataclass(frozen=True)
class Wanted:
    """What the spec asks of one adapter: its resolved URI (None: a FineTuneJob's output not
    known yet), its rollout, its pinned version."""

    name: str
    uri: str | None
    rollout: AdapterRollout | None = None
    pin: str | None = None


@dataclass(frozen=True)
class Figures:
    """One version as the routers saw it over their window (summed over replicas):
    requests, failed requests, the p99 latency in seconds, and a breach a router judged."""

    requests: int = 0
    errors: int = 0
    p99_s: float | None = None
    breach: str | None = None


@dataclass(frozen=True)
class RolloutEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutOutcome:
    versions: list[AdapterVersions] | None
    events: list[RolloutEvent] = field(default_factory=list)
    active: bool = False  # a canary is in progress: look again in a second


def with_versions(md: ModelDeployment, rows: list[AdapterVersions] | None) -> ModelDeployment:
    """`md` carrying the versions this pass decided (what the builders serve)."""
    status = md.status or ModelDeploymentStatus()
    return md.model_copy(update={"status": status.model_copy(update={"adapter_versions": rows})})


def figures_of(
    leases: Sequence[Mapping[str, Any]], namespace: str, name: str, now: float
) -> dict[str, Figures]:
    """The figures of deployment `namespace/name`'s versions, summed over the routers'
    Leases (`tramontane_api.rollouts`) still renewed (within their duration plus 30 s, by
    `now`, epoch seconds): requests and errors add up, the p99 is the worst replica's, and a
    replica's breach verdict is kept, naming the replica."""
    out: dict[str, Figures] = {}
    for lease in leases:
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        try:
            renewed = parse_time(str(spec["renewTime"]))
            stale = now > renewed + float(spec.get("leaseDurationSeconds") or 10) + 30
        except (KeyError, TypeError, ValueError):
            continue
        if stale:
            continue
        replica = str(spec.get("holderIdentity") or meta.get("name") or "?")
        text = str((meta.get("annotations") or {}).get(ROLLOUTS_ANNOTATION) or "{}")
        for (ns, md, served), f in decode_rollouts(text).items():
            if (ns, md) != (namespace, name):
                continue
            seen = out.get(served, Figures())
            p99s = [p for p in (seen.p99_s, f.p99_ms / 1000 if f.p99_ms is not None else None)
                    if p is not None]  # fmt: skip
            out[served] = Figures(
                requests=seen.requests + f.requests,
                errors=seen.errors + f.errors,
                p99_s=max(p99s) if p99s else None,
                breach=seen.breach or (f"router {replica}: {f.breach}" if f.breach else None),
            )
    return out


def wanted_adapters(
    md: ModelDeployment, adapter_uris: Mapping[str, str] | None = None
) -> list[Wanted]:
    """The spec's adapters with their URIs resolved (`adapter_uris`: FineTuneJob -> output)."""
    uris = adapter_uris or {}
    out = []
    for a in md.spec.adapters or []:
        uri = a.uri
        if uri is None and a.fine_tune_job_ref is not None:
            uri = uris.get(a.fine_tune_job_ref.name)
        out.append(Wanted(a.name, uri, a.rollout, a.version))
    return out


def step_rollouts(
    wanted: Sequence[Wanted],
    previous: Sequence[AdapterVersions] | None,
    figures: Mapping[str, Figures],
    now: datetime,
) -> RolloutOutcome:
    """Every adapter's next versions (`figures`: served name -> what the routers saw)."""
    before = {a.name: a for a in previous or []}
    rows: list[AdapterVersions] = []
    events: list[RolloutEvent] = []
    for want in wanted:
        row, more = step_adapter(want, before.get(want.name), figures, now)
        events += more
        if row is not None:
            rows.append(row)
    active = any(v.state == "Canary" for r in rows for v in r.versions)
    return RolloutOutcome(rows or None, events, active)


def judge(canary: Figures | None, stable: Figures | None, analysis: RolloutAnalysis) -> str | None:
    """Why the canary breaches its analysis (None: it does not, or too few requests yet)."""
    if canary is None:
        return None
    if canary.breach:
        return canary.breach
    if canary.requests < analysis.min_requests:
        return None
    rate = canary.errors / canary.requests
    if rate > analysis.max_error_rate:
        return (
            f"error rate {rate:.1%} ({canary.errors} of {canary.requests}) above "
            f"{analysis.max_error_rate:.1%}"
        )
    if (
        stable is not None
        and stable.requests >= analysis.min_requests
        and stable.p99_s
        and canary.p99_s is not None
    ):
        ratio = canary.p99_s / stable.p99_s
        if ratio > analysis.max_p99_latency_ratio:
            return (
                f"p99 latency {canary.p99_s * 1000:.0f} ms is {ratio:.1f}x the stable "
                f"version's {stable.p99_s * 1000:.0f} ms (at most "
                f"{analysis.max_p99_latency_ratio:g}x)"
            )
    return None


def step_adapter(
    want: Wanted, prev: AdapterVersions | None, figures: Mapping[str, Figures], now: datetime
) -> tuple[AdapterVersions | None, list[RolloutEvent]]:
    """One adapter's next versions and the Events of the change."""
    stable = _find(prev, "Stable")
    if prev is None or stable is None:
        if want.uri is None:
            return prev, []
        v = adapter_version(want.uri)
        row = AdapterVersions(name=want.name, versions=[_version(want.name, v, want.uri, now)])
        return row, [_event("Normal", ADAPTER_VERSION_SERVED, f"adapter {want.name}: version "
                            f"{v} serves 100 %")]  # fmt: skip
    kept = {v.version: v for v in prev.versions}
    canary = _find(prev, "Canary")
    if want.pin is not None:
        return _pinned(want, prev, stable, canary, kept, now)
    target = adapter_version(want.uri) if want.uri is not None else stable.version
    if canary is not None and target == canary.version:
        if want.rollout is None:  # the rollout was removed: the canary is the version now
            return _promote(prev, stable, canary, now)
        return _analyse(want, want.rollout, prev, stable, canary, figures, now)
    events: list[RolloutEvent] = []
    if canary is not None:  # the spec names another version: the canary is abandoned
        reason = f"the spec no longer names version {canary.version}"
        prev = _rolled_back(prev, stable, canary, reason, now)
        events.append(_event("Normal", ADAPTER_ROLLED_BACK, f"adapter {want.name}: canary "
                             f"{canary.version} rolled back: {reason}"))  # fmt: skip
    if target == stable.version:
        return _with(prev, message=None) if not events else prev, events
    known = kept.get(target)
    if known is not None and known.state == "RolledBack":
        why = prev.last_rollback.reason if prev.last_rollback else "rolled back"
        message = (
            f"version {target} was rolled back ({why}); name a new version, or pin it with "
            "spec.adapters[].version to serve it anyway"
        )
        return _with(prev, message=message), events
    if known is not None:  # a kept Previous version named again: the manual rollback
        row, more = _switch(prev, stable, known, now, "named again by the spec")
        return row, events + more
    if want.uri is None:  # unreachable: target is the stable's version then
        return prev, events
    new = _version(want.name, target, want.uri, now)
    if want.rollout is None:
        row, more = _switch(_with(prev, versions=[new, *prev.versions]), stable, new, now, "new")
        return row, events + more
    weight = want.rollout.steps[0].weight
    versions = [
        new.model_copy(update={"state": "Canary", "weight": weight}),
        *(
            v.model_copy(update={"weight": 100 - weight}) if v.version == stable.version else v
            for v in prev.versions
        ),
    ]
    row = _with(prev, versions=_prune(versions), step=0, step_since=now, message=None)
    message = (
        f"adapter {want.name}: version {target} takes {weight} %, version {stable.version} "
        f"{100 - weight} %"
    )
    return row, [*events, _event("Normal", CANARY_STARTED, message)]


def _analyse(
    want: Wanted,
    rollout: AdapterRollout,
    prev: AdapterVersions,
    stable: AdapterVersion,
    canary: AdapterVersion,
    figures: Mapping[str, Figures],
    now: datetime,
) -> tuple[AdapterVersions, list[RolloutEvent]]:
    seen = figures.get(canary.served_as)
    breach = judge(seen, figures.get(stable.served_as), rollout.analysis)
    if breach is not None:
        row = _rolled_back(prev, stable, canary, breach, now)
        return row, [_event("Warning", ADAPTER_ROLLED_BACK,
                            f"adapter {want.name}: version {canary.version} rolled back to "
                            f"{stable.version}: {breach}")]  # fmt: skip
    step = min(prev.step or 0, len(rollout.steps) - 1)
    since = prev.step_since or canary.since or now
    held = (now - since).total_seconds() >= rollout.steps[step].hold_seconds
    enough = seen is not None and seen.requests >= rollout.analysis.min_requests
    if not (held and enough):
        return prev, []
    if step + 1 >= len(rollout.steps):
        return _promote(prev, stable, canary, now)
    weight = rollout.steps[step + 1].weight
    row = _with(
        prev,
        versions=[_weighted(v, stable, canary, weight) for v in prev.versions],
        step=step + 1,
        step_since=now,
    )
    return row, [_event("Normal", CANARY_STEPPED, f"adapter {want.name}: version "
                        f"{canary.version} takes {weight} % (step {step + 2} of "
                        f"{len(rollout.steps)})")]  # fmt: skip


def _pinned(
    want: Wanted,
    prev: AdapterVersions,
    stable: AdapterVersion,
    canary: AdapterVersion | None,
    kept: Mapping[str, AdapterVersion],
    now: datetime,
) -> tuple[AdapterVersions, list[RolloutEvent]]:
    pin = want.pin or ""
    target = kept.get(pin)
    if target is None:
        message = f"version {pin} is not kept (kept: {', '.join(sorted(kept))}): pin ignored"
        return _with(prev, message=message), []
    if target.version == stable.version and canary is None:
        return _with(prev, message=None), []
    events: list[RolloutEvent] = []
    if canary is not None and canary.version != pin:
        prev = _rolled_back(prev, stable, canary, f"version {pin} pinned", now)
        events.append(_event("Normal", ADAPTER_ROLLED_BACK, f"adapter {want.name}: canary "
                             f"{canary.version} rolled back: version {pin} pinned"))  # fmt: skip
        stable = _find(prev, "Stable") or stable
        if stable.version == pin:
            return prev, events
    row, more = _switch(prev, stable, target, now, "pinned")
    return row, events + more


def _switch(
    prev: AdapterVersions, stable: AdapterVersion, to: AdapterVersion, now: datetime, why: str
) -> tuple[AdapterVersions, list[RolloutEvent]]:
    """`to` takes 100 % at once; the stable becomes Previous; any canary ends."""
    versions = []
    for v in prev.versions:
        if v.version == to.version:
            versions.append(_state(v, "Stable", 100, now))
        elif v.version == stable.version or v.state == "Canary":
            versions.append(_state(v, "Previous", 0, now))
        else:
            versions.append(v)
    row = _with(prev, versions=_prune(versions), step=None, step_since=None, message=None)
    message = (
        f"adapter {prev.name}: version {to.version} ({why}) serves 100 %, version "
        f"{stable.version} kept"
    )
    return row, [_event("Normal", ADAPTER_VERSION_SWITCHED, message)]


def _promote(
    prev: AdapterVersions, stable: AdapterVersion, canary: AdapterVersion, now: datetime
) -> tuple[AdapterVersions, list[RolloutEvent]]:
    versions = [
        _state(v, "Stable", 100, now)
        if v.version == canary.version
        else _state(v, "Previous", 0, now)
        if v.version == stable.version
        else v
        for v in prev.versions
    ]
    row = _with(prev, versions=_prune(versions), step=None, step_since=None, message=None)
    return row, [_event("Normal", ADAPTER_PROMOTED, f"adapter {prev.name}: version "
                        f"{canary.version} promoted to 100 %, version {stable.version} "
                        "kept as Previous")]  # fmt: skip


def _rolled_back(
    prev: AdapterVersions,
    stable: AdapterVersion,
    canary: AdapterVersion,
    reason: str,
    now: datetime,
) -> AdapterVersions:
    versions = [
        _state(v, "RolledBack", 0, now)
        if v.version == canary.version
        else v.model_copy(update={"weight": 100})
        if v.version == stable.version
        else v
        for v in prev.versions
    ]
    return _with(
        prev,
        versions=_prune(versions),
        step=None,
        step_since=None,
        last_rollback=AdapterRollback(version=canary.version, reason=reason, time=now),
        message=f"version {canary.version} rolled back: {reason}",
    )


def _weighted(
    v: AdapterVersion, stable: AdapterVersion, canary: AdapterVersion, weight: int
) -> AdapterVersion:
    if v.version == canary.version:
        return v.model_copy(update={"weight": weight})
    if v.version == stable.version:
        return v.model_copy(update={"weight": 100 - weight})
    return v


def _prune(versions: list[AdapterVersion]) -> list[AdapterVersion]:
    """At most KEEP versions (the stable and the canary always), in list order (newest
    first): older Previous and RolledBack versions go first."""
    live = [v for v in versions if v.state in ("Stable", "Canary")]
    others = [v for v in versions if v.state not in ("Stable", "Canary")]
    room = max(0, KEEP - len(live))
    keep = {v.version for v in live} | {v.version for v in others[:room]}
    return [v for v in versions if v.version in keep]


def _find(row: AdapterVersions | None, state: AdapterVersionState) -> AdapterVersion | None:
    return next((v for v in row.versions if v.state == state), None) if row else None


def _version(name: str, version: str, uri: str, now: datetime) -> AdapterVersion:
    return AdapterVersion(
        version=version,
        uri=uri,
        served_as=served_as(name, version),
        weight=100,
        state="Stable",
        since=now,
    )


def _state(
    v: AdapterVersion, state: AdapterVersionState, weight: int, now: datetime
) -> AdapterVersion:
    since = v.since if v.state == state else now
    return v.model_copy(update={"state": state, "weight": weight, "since": since})


def _with(row: AdapterVersions, **changes: object) -> AdapterVersions:
    return row.model_copy(update=changes)


def _event(type_: str, reason: str, message: str) -> RolloutEvent:
    return RolloutEvent(type_, reason, message[:1024])
