"""Online checks: a probe each router sends to an adapter's canary version during its steps.

A canary whose rollout has `analysis.onlineCheck` is sent the check's chat (greedy:
temperature 0, at most `maxTokens`) every `intervalSeconds` by every router replica, through
`send`: the endpoint the balancer picks for the deployment and the
versioned served name, as a client's request would get, but as system traffic (no tenant's
limits or usage, not in the version's request and error figures). An answer that does not
contain a match of `expect`, or a probe that fails or times out (`timeout_s`, 30 s), is a
breach: the canary is vetoed on this replica at once (`Canaries.veto`: 0 % from then on), and
the reason goes into this replica's Lease verdict, so the operator rolls it back.

One task per router (`Probes`): each round it sends the probes that are due, concurrently,
and waits for them all, so one probe per version is in flight at a time; nothing here holds
a lock across a call. The loop stops with the router (`stop`); a canary that ends (the table
lists it no longer as a canary) is no longer probed, and a verdict on it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

import grpc

from tramontane_api.v1alpha1.modeldeployment import OnlineCheck
from tramontane_workers.contract import inference_pb2 as pb

from .dataplane import PROBE_METADATA, DataPlane
from .errors import DeadlineExceeded, RouterError, from_upstream
from .table import Version, Versions

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0
TICK_S = 0.25  # how often the loop looks for probes that are due
_SHOWN = 60  # characters of a wrong answer quoted in the verdict
MAX_ANSWER_CHARS = 16_384  # what `expect` is searched in (maxTokens is at most 1024)
MATCH_TIMEOUT_S = 1.0


def request_for(check: OnlineCheck) -> pb.ChatRequest:
    """The probe's request (its model is set by the data plane: the versioned name)."""
    return pb.ChatRequest(
        messages=[pb.Message(role=m.role, content=m.content) for m in check.messages],
        max_tokens=check.max_tokens,
        temperature=0.0,
    )


def judge(answer: str, expect: str) -> str | None:
    """The breach for an answer (None: it contains a match of `expect`)."""
    if re.search(expect, answer[:MAX_ANSWER_CHARS]) is not None:
        return None
    shown = answer if len(answer) <= _SHOWN else answer[:_SHOWN] + "..."
    return f"online check: answer {shown!r} does not match /{expect}/"


async def verdict(answer: str, expect: str, timeout_s: float = MATCH_TIMEOUT_S) -> str | None:
    """`judge` off the event loop and within `timeout_s`: `expect` is the tenant's, and a
    pattern that backtracks without end must not stall the router (the thread is left to
    finish; the canary is vetoed, so it is not probed again)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(judge, answer, expect), timeout_s)
    except TimeoutError:
        return f"online check: matching the answer against /{expect}/ took over {timeout_s:g}s"


def failed(error: str) -> str:
    """The breach for a probe that got no answer."""
    return f"online check: the probe failed ({error})"


async def send(
    plane: DataPlane,
    versions: Versions,
    version: Version,
    request: pb.ChatRequest,
    timeout_s: float,
) -> str | None:
    """Send `request` to `version` of an adapter as system traffic: the endpoint the balancer
    picks for the deployment's pools and the versioned served name, as a client's attempt
    would get, but no tenant, limits, fair queue or usage, and not in the version's figures.
    The answer's text; None when the deployment has no pool to send it to (nothing to
    judge). Raises `RouterError` when the probe fails: an upstream error (UNAVAILABLE once
    no other cluster is left to fail over to, as for a client's request), or no answer
    within `timeout_s`."""
    if plane.draining:
        return None
    deployment = next(
        (d for d in plane.source.table.by_namespace.get(versions.namespace, ())
         if d.name == versions.deployment),
        None,
    )  # fmt: skip
    if deployment is None:
        return None
    upstream = pb.ChatRequest()
    upstream.CopyFrom(request)
    upstream.model = version.served_as
    deadline = time.monotonic() + timeout_s
    tried: list[str] = []
    error: RouterError | None = None
    for _ in range(plane.settings.attempts):  # UNAVAILABLE fails over, as a client's does
        endpoint = plane.balancer.pick(deployment.endpoints, tried)
        if endpoint is None:
            break
        tried.append(endpoint.cluster)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"no answer within {timeout_s:g}s")
        metadata = [("application", endpoint.application),
                    ("multiplexed_model_id", version.served_as),
                    (PROBE_METADATA, "online-check")]  # fmt: skip
        plane.balancer.started(endpoint)
        try:
            response: pb.ChatResponse = await plane.backends.stub(endpoint).Chat(
                upstream, metadata=metadata, timeout=remaining
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"no answer within {timeout_s:g}s") from None
            error = from_upstream(exc.code(), exc.details())
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise error from None
            continue
        finally:
            plane.balancer.finished(endpoint, None)  # the version's fault, not the endpoint's
        return response.choices[0].message.content if response.choices else ""
    if error is not None:
        raise error
    return None


class Probes:
    def __init__(
        self,
        plane: DataPlane,
        *,
        timeout_s: float = PROBE_TIMEOUT_S,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plane = plane
        self.timeout_s = timeout_s
        self.tick_s = tick_s
        self.clock = clock
        self.sent = 0  # probes sent by this replica (for tests and logs)
        self._due: dict[tuple[str, str], float] = {}  # (application, served_as) -> when
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="router:online-checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self.plane.draining:
            try:
                await self.round()
            except Exception:
                log.exception("online checks: this round failed; trying again")
            await asyncio.sleep(self.tick_s)

    async def round(self) -> None:
        """Send the probes that are due and wait for their verdicts."""
        now = self.clock()
        targets = self.plane.canaries.online_checks()
        live = {(app, canary.served_as) for app, _, canary in targets}
        self._due = {k: t for k, t in self._due.items() if k in live}
        due = []
        for app, vs, canary in targets:
            key = (app, canary.served_as)
            if self._due.get(key, now) <= now:
                check = vs.analysis.online_check if vs.analysis is not None else None
                if check is not None:
                    self._due[key] = now + check.interval_seconds
                    due.append(self._probe(app, vs, canary, check))
        if due:
            await asyncio.gather(*due)

    async def _probe(self, app: str, vs: Versions, canary: Version, check: OnlineCheck) -> None:
        self.sent += 1
        why: str | None
        try:
            answer = await asyncio.wait_for(
                send(self.plane, vs, canary, request_for(check), self.timeout_s),
                self.timeout_s,
            )
        except (TimeoutError, DeadlineExceeded):  # whichever of the two timers fires first
            why = failed(f"no answer within {self.timeout_s:g}s")
        except RouterError as exc:
            why = failed(f"{exc.grpc_code.name}: {exc}")
        else:
            if answer is None:
                return  # no pool to ask (or draining): nothing to judge
            why = await verdict(answer, check.expect)
        if why is not None:
            self.plane.canaries.veto(app, canary.served_as, why)  # logs it
