"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it.

`LeaderElector.run(lead)` waits until this process holds the Lease `namespace/name`, runs
`lead()` as a task while it does, and renews the Lease every `retry_period_s`:

- **Acquiring**: the Lease is created when absent. One held by another identity is taken over
  only once its record (holder, renewTime, durations, transitions) has not changed for its
  `leaseDurationSeconds` *as measured by this process's monotonic clock* from the moment this
  process first saw that record: remote clocks are never compared with ours (client-go's
  observedTime). An empty holder (a released Lease) is taken at once. Each change of holder
  increments `spec.leaseTransitions`.
- **Every write** is a PUT carrying the `metadata.resourceVersion` that was read: when two
  candidates race, the API server accepts one and answers the other 409 `Conflict`.
- **Losing**: when no renewal has succeeded for `renew_deadline_s` (counted from the start of
  the last successful one: API errors, an unreachable server), or a read shows another holder,
  `lead()` is cancelled and `run` raises `LeadershipLost`. The caller is expected to exit the
  process (as controller-runtime does); Kubernetes restarts it as a standby. Since
  `renew_deadline_s < lease_duration_s`, the old leader has stopped before any standby's
  clock can let it take over (clock rates, not clocks, must agree).
- **Shutdown**: cancelling `run` cancels `lead()`, then (with `release_on_cancel`, the default,
  as client-go's `ReleaseOnCancel`) writes the Lease with an empty holder and
  `leaseDurationSeconds: 1`, so a standby takes over within about one retry period instead of
  a whole lease duration.
- **`lead()` returning** (or raising) ends the term: the Lease is released and `run` returns
  (or re-raises).

No Kopf and no Prometheus here: `state` and `is_leader` are plain attributes for callers to
report. Transitions are logged at INFO. RBAC: `get`, `create`, `update` on `leases` in the
Lease's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .client import ApiError, Conflict, KubeClient, NotFound, Unreachable
from .resources import LEASE
from .times import micro_time

log = logging.getLogger(__name__)

ElectionState = Literal["idle", "standby", "leading", "lost", "released"]

# client-go's JitterFactor: a standby waits retry_period * (1 + [0, 1.2)) between tries, so
# candidates started together do not keep colliding.
JITTER_FACTOR = 1.2


class LeadershipLost(Exception):
    """This process could not renew the Lease within the renew deadline, or another holds it."""


@dataclass(frozen=True)
class LeaderElectionConfig:
    """Which Lease, who we are, and the timings (client-go's defaults: 15 s / 10 s / 2 s).

    `release_on_cancel=False` leaves the Lease held when `run` is cancelled: a standby then
    waits the whole lease duration (what a crash looks like to it).
    """

    namespace: str
    name: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        problems = config_problems(
            self.identity, self.lease_duration_s, self.renew_deadline_s, self.retry_period_s
        )
        if not self.namespace or not self.name:
            problems.insert(0, "the Lease's namespace and name must not be empty")
        if problems:
            raise ValueError("leader election: " + "; ".join(problems))

    @property
    def lease_duration_seconds(self) -> int:
        """`spec.leaseDurationSeconds` (whole seconds, rounded up: never shorter)."""
        return max(1, math.ceil(self.lease_duration_s))


def config_problems(
    identity: str, lease_duration_s: float, renew_deadline_s: float, retry_period_s: float
) -> list[str]:
    """What is wrong with these leader-election settings (client-go's checks); empty if fine."""
    problems = []
    if not identity:
        problems.append("the identity must not be empty")
    if not retry_period_s > 0:
        problems.append(f"retry period must be > 0, got {retry_period_s}")
    if not lease_duration_s > renew_deadline_s:
        problems.append(
            f"lease duration ({lease_duration_s} s) must be greater than the renew deadline "
            f"({renew_deadline_s} s)"
        )
    if not renew_deadline_s > JITTER_FACTOR * retry_period_s:
        problems.append(
            f"renew deadline ({renew_deadline_s} s) must be greater than {JITTER_FACTOR} x the "
            f"retry period ({retry_period_s} s)"
        )
    return problems


def default_identity(env: Mapping[str, str] | None = None) -> str:
    """`$POD_NAME` (downward API), else the host name plus a random suffix: two processes on
    one host must never share an identity."""
    env = os.environ if env is None else env
    return env.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class _Record:
    """The Lease's spec, as compared between reads (a change restarts the observed time)."""

    holder: str
    duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> _Record:
        spec = lease.get("spec") or {}
        try:
            duration = int(spec.get("leaseDurationSeconds") or 0)
            transitions = int(spec.get("leaseTransitions") or 0)
        except (TypeError, ValueError):
            duration, transitions = 0, 0
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_s=duration,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=transitions,
        )


class LeaderElector:
    """Campaigns for one Lease and runs `lead()` while holding it (see the module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        config: LeaderElectionConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock  # wall clock, only for the timestamps written into the Lease
        self.state: ElectionState = "idle"
        self.holder: str | None = None  # the holder last observed ("" once released)
        self._lease: dict[str, Any] | None = None  # as last read or written by us
        self._record: _Record | None = None
        self._observed_at = 0.0  # monotonic time the record last changed, as we saw it

    @property
    def is_leader(self) -> bool:
        return self.state == "leading"

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Acquire the Lease, run `lead()` while holding it; raise `LeadershipLost` when it is
        lost. Cancel `run` to step down (releasing the Lease, per the config)."""
        self._set_state("standby")
        try:
            while True:
                started = time.monotonic()
                if await self._try_acquire_or_renew(deadline=None):
                    break
                jitter = 1 + random.random() * JITTER_FACTOR
                await asyncio.sleep(self.config.retry_period_s * jitter)
        except asyncio.CancelledError:
            self._set_state("idle")  # shut down while standing by: nothing held, nothing to do
            raise
        self._set_state("leading")
        task = asyncio.ensure_future(lead())
        try:
            await self._renew_while(task, started)
        except BaseException:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if self.state == "leading" and self.config.release_on_cancel:
                await self._release()
            raise
        await self._release()
        await task  # lead() ended on its own: its exception, if any, is the caller's

    async def _renew_while(self, task: asyncio.Future[None], last_ok: float) -> None:
        """Renew every retry period until `task` ends; raise `LeadershipLost` when the renew
        deadline passes with no successful renewal, or another identity holds the Lease."""
        config = self.config
        while True:
            deadline = last_ok + config.renew_deadline_s
            pause = min(config.retry_period_s, max(0.0, deadline - time.monotonic()))
            await asyncio.wait([task], timeout=pause)
            if task.done():
                return
            if time.monotonic() >= deadline:
                self._lose(f"no renewal succeeded within {config.renew_deadline_s} s")
            started = time.monotonic()
            if await self._try_acquire_or_renew(deadline=deadline):
                last_ok = started
            elif self.holder not in (None, "", config.identity):
                self._lose(f"the Lease is held by {self.holder}")

    def _lose(self, why: str) -> None:
        self._set_state("lost", why)
        raise LeadershipLost(f"{self.config.namespace}/{self.config.name}: {why}")

    async def _try_acquire_or_renew(self, deadline: float | None) -> bool:
        """One round of client-go's tryAcquireOrRenew; False on any API error (logged),
        or when `deadline` (monotonic) passes first."""
        try:
            if deadline is None:
                return await self._attempt()
            async with asyncio.timeout_at(_loop_time(deadline)):
                return await self._attempt()
        except TimeoutError:
            log.warning("leader election: %s: renewal timed out", self._lease_ref())
        except (ApiError, Unreachable) as exc:
            log.warning("leader election: %s: %s", self._lease_ref(), exc)
        return False

    async def _attempt(self) -> bool:
        config = self.config
        now = self.clock()
        lease = await self.client.get(LEASE, config.namespace, config.name)
        if lease is None:
            try:
                self._lease = await self.client.create(LEASE, self._new_lease(now))
            except Conflict:  # another candidate created it first
                return False
            self._observe(self._lease)
            return True
        self._observe(lease)
        record = _Record.of(lease)
        held_by_other = record.holder not in ("", config.identity)
        if held_by_other and time.monotonic() < self._observed_at + record.duration_s:
            return False
        spec = dict(lease.get("spec") or {})
        if record.holder != config.identity:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = record.transitions + 1
            if held_by_other:
                log.info(
                    "leader election: %s: the lease of %s expired; taking it over",
                    self._lease_ref(),
                    record.holder,
                )
        spec.update(
            holderIdentity=config.identity,
            leaseDurationSeconds=config.lease_duration_seconds,
            renewTime=micro_time(now),
        )
        try:
            self._lease = await self.client.replace(LEASE, {**lease, "spec": spec})
        except (Conflict, NotFound):  # changed or deleted since our read: next round
            return False
        self._observe(self._lease)
        return True

    async def _release(self) -> None:
        """Give the Lease up (empty holder, 1 s duration) so a standby takes it at once."""
        lease = self._lease
        if lease is None or _Record.of(lease).holder != self.config.identity:
            return
        now = micro_time(self.clock())
        spec = {
            **(lease.get("spec") or {}),
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
        }
        try:
            async with asyncio.timeout(self.config.renew_deadline_s):
                self._lease = await self.client.replace(LEASE, {**lease, "spec": spec})
        except Exception as exc:  # best effort, whatever went wrong (a closed client too)
            # Someone took it meanwhile (Conflict), or the server is away: either way the
            # standby gets it at the latest when our last renewal expires.
            log.warning("leader election: %s: release failed: %s", self._lease_ref(), exc)
            return
        self._set_state("released")

    def _observe(self, lease: dict[str, Any]) -> None:
        record = _Record.of(lease)
        if record != self._record:
            self._record, self._observed_at = record, time.monotonic()
        if record.holder != self.holder:
            if record.holder and record.holder != self.config.identity:
                log.info("leader election: %s: %s is the leader", self._lease_ref(), record.holder)
            self.holder = record.holder

    def _new_lease(self, now: float) -> dict[str, Any]:
        config = self.config
        return {
            "apiVersion": LEASE.api_version,
            "kind": LEASE.kind,
            "metadata": {"name": config.name, "namespace": config.namespace},
            "spec": {
                "holderIdentity": config.identity,
                "leaseDurationSeconds": config.lease_duration_seconds,
                "acquireTime": micro_time(now),
                "renewTime": micro_time(now),
                "leaseTransitions": 0,
            },
        }

    def _set_state(self, state: ElectionState, why: str = "") -> None:
        if state != self.state:
            log.info(
                "leader election: %s: %s %s -> %s%s",
                self._lease_ref(),
                self.config.identity,
                self.state,
                state,
                f" ({why})" if why else "",
            )
            self.state = state

    def _lease_ref(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"


def _loop_time(monotonic_deadline: float) -> float:
    """A `time.monotonic()` deadline in the running loop's clock (they may differ)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
