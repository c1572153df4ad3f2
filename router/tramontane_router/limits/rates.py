"""Per-tenant rate limits in the request path: requests per minute, tokens per minute and
concurrent requests, read from the Tenant at every request (a change applies at once).

Each limit is enforced against this replica's cap for it (the whole limit with one replica;
its share when the budget exchange splits the limit across replicas). A request is admitted
only if every limit has room; nothing is taken from any limit otherwise. Tokens are reserved
at the worst case (`tokens.worst_case`: the prompt counted with the tokenizer plus
`max_tokens`, or what the context leaves) and settled to the real prompt + completion tokens
when the request ends, fails or is cancelled, so nothing leaks and a stream counts exactly as
a unary call. A refusal is `RateLimited` naming the limit, with `retry_after_s` when the
request would fit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tramontane_workers.contract import inference_pb2 as pb

from ..errors import RateLimited
from ..table import Route, TenantView
from .budgets import LongBudgets
from .tokens import prompt_tokens, worst_case
from .types import WINDOW_S, Demand, LimitKey, LimitName
from .window import Entry, SlidingWindow


@dataclass
class _TenantState:
    requests: SlidingWindow
    tokens: SlidingWindow
    in_flight: int = 0
    wanted: dict[LimitName, float] = field(default_factory=lambda: defaultdict(float))
    limits: dict[LimitName, int] = field(default_factory=dict)


class _Unlimited:
    def settle(self, usage: pb.Usage | None) -> None:
        return None


UNLIMITED = _Unlimited()


class _Permit:
    def __init__(
        self,
        limiter: RateLimiter,
        tenant: str,
        state: _TenantState,
        tokens: Entry | None,
        reserved: int,
    ) -> None:
        self._limiter, self._tenant, self._state = limiter, tenant, state
        self._tokens, self.reserved = tokens, reserved
        self._settled = False

    def settle(self, usage: pb.Usage | None) -> None:
        if self._settled:
            return
        self._settled = True
        self._state.in_flight -= 1
        used = (usage.prompt_tokens + usage.completion_tokens) if usage is not None else 0
        if self._tokens is not None:
            self._state.tokens.settle(self._tokens, used)
            # Demand counts what the request really used, not its worst case: a replica whose
            # demand is met must not hold a cap above what it uses (it lends the rest).
            wanted = self._state.wanted
            wanted["tokens"] = max(0.0, wanted.get("tokens", 0.0) - (self.reserved - used))
        if self._limiter.budgets is not None:
            self._limiter.budgets.settle(self._tenant, self.reserved, used)


class RateLimiter:
    """The `Limits` of the data plane, a `DemandSource` and a `CapSink` for the exchange."""

    def __init__(
        self,
        *,
        budgets: LongBudgets | None = None,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
    ) -> None:
        self.budgets = budgets
        self.window_s = window_s  # 60 s: "per minute"; shorter only in tests and benchmarks
        # With a budget exchange (several replicas), a limit this replica has no cap for yet
        # admits nothing until the exchange gives it one (about a second): taking the whole
        # limit before the replicas have agreed could overspend it.
        self.shared = False
        self._clock = clock
        self._states: dict[str, _TenantState] = {}
        self._caps: dict[LimitKey, float] = {}

    # --------------------------------------------------------------------- request path
    async def admit(
        self, tenant: TenantView, route: Route, request: pb.ChatRequest, deadline: float
    ) -> _Permit | _Unlimited:
        q = tenant.quotas
        limits: dict[LimitName, int] = {}
        if q.requests_per_minute is not None:
            limits["requests"] = q.requests_per_minute
        if q.tokens_per_minute is not None:
            limits["tokens"] = q.tokens_per_minute
        if q.max_concurrent_requests is not None:
            limits["concurrent"] = q.max_concurrent_requests
        long_limits = self.budgets is not None and self.budgets.limited(tenant)
        if not limits and not long_limits:
            self._states.pop(tenant.name, None)
            return UNLIMITED
        cost = 0
        if "tokens" in limits or long_limits:
            prompt = await prompt_tokens(request)
            cost = worst_case(prompt, request, route.max_model_len)
        state = self._states.get(tenant.name)
        if state is None:
            state = self._states[tenant.name] = _TenantState(
                SlidingWindow(self.window_s), SlidingWindow(self.window_s)
            )
        state.limits = limits
        return self._take(tenant, state, limits, cost)

    def _take(
        self, tenant: TenantView, state: _TenantState, limits: Mapping[LimitName, int], cost: int
    ) -> _Permit:
        now = self._clock()
        refusals: list[tuple[str, float | None]] = []
        for name, amount in (("requests", 1.0), ("tokens", float(cost)), ("concurrent", 1.0)):
            limit = limits.get(name)  # type: ignore[call-overload]
            if limit is None:
                continue
            state.wanted[name] += amount  # type: ignore[index]
            default = 0.0 if self.shared else float(limit)
            cap = self._caps.get((tenant.name, name), default)  # type: ignore[arg-type]
            refusal = _check(name, state, amount, limit, min(cap, limit), now)
            if refusal is not None:
                refusals.append(refusal)
        if self.budgets is not None:
            refusals += self.budgets.check(tenant, cost)
        if refusals:
            messages = "; ".join(m for m, _ in refusals)
            waits = [w for _, w in refusals]
            retry = None if any(w is None for w in waits) else max(w or 0.0 for w in waits)
            raise RateLimited(messages, retry_after_s=retry)
        state.in_flight += 1
        if "requests" in limits:
            state.requests.add(1, now)
        entry = state.tokens.add(cost, now) if "tokens" in limits else None
        if self.budgets is not None:
            self.budgets.reserve(tenant.name, cost)
        return _Permit(self, tenant.name, state, entry, cost)

    # -------------------------------------------------------------- budget exchange side
    def demands(self) -> list[Demand]:
        now = self._clock()
        out = []
        for tenant, state in self._states.items():
            for name, limit in state.limits.items():
                if name == "concurrent":
                    used = float(state.in_flight)
                elif name == "requests":
                    used = state.requests.used(now)
                else:
                    used = state.tokens.used(now)
                out.append(Demand(tenant, name, limit, used, state.wanted.get(name, 0.0)))
            state.wanted.clear()
        return out

    def set_caps(self, caps: Mapping[LimitKey, float]) -> None:
        self._caps.update(caps)


_NAMES = {
    "requests": "requestsPerMinute",
    "tokens": "tokensPerMinute",
    "concurrent": "maxConcurrentRequests",
}


def _check(
    name: str, state: _TenantState, amount: float, limit: int, cap: float, now: float
) -> tuple[str, float | None] | None:
    """None if `amount` fits; else the refusal's message and when it would fit."""
    field_name = _NAMES[name]
    if name == "concurrent":
        if state.in_flight + 1 <= cap:
            return None
        return (f"{field_name}: {state.in_flight} requests in flight, the limit is {limit}", 1.0)
    window = state.requests if name == "requests" else state.tokens
    if amount > limit:
        return (
            f"{field_name}: this request may use {int(amount)} tokens (prompt plus max_tokens, "
            f"or what the model's context allows), more than the limit of {limit} a minute; "
            "set a lower max_tokens",
            None,
        )
    wait = window.retry_after(amount, cap, now)
    if wait == 0:
        return None
    unit = "requests" if name == "requests" else "tokens"
    used = int(window.used(now))
    return (
        f"{field_name}: {used} {unit} used in the last 60 s, the limit is {limit}",
        wait if wait is not None else 1.0,
    )
