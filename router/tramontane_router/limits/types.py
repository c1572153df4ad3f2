"""What the limiter and the cross-replica budget exchange tell each other.

A global limit (a tenant's requests or tokens per minute) is enforced by every router replica
on a sliding 60-second window of its own admissions, against this replica's *cap* for it. The
exchange reads each replica's `Demand` (what it used in the window, what it was asked for),
agrees the caps with the other replicas so that their sum never exceeds the limit, and hands
this replica its caps. With one replica (local mode, tests) the cap is the limit itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

# requests and tokens per minute (used: admitted in the window); concurrent requests (used: in
# flight now). The split rule is the same for all three.
LimitName = Literal["requests", "tokens", "concurrent"]
LimitKey = tuple[str, LimitName]  # (tenant, limit)
WINDOW_S = 60.0


@dataclass(frozen=True)
class Demand:
    """One replica's view of one tenant's global limit, now."""

    tenant: str
    limit: LimitName
    global_limit: int  # the Tenant's requestsPerMinute / tokensPerMinute / maxConcurrentRequests
    used: float  # admitted (reserved or settled) in the last WINDOW_S, or in flight now
    wanted: float  # asked for in the last interval, admitted or refused


class DemandSource(Protocol):
    def demands(self) -> list[Demand]:
        """Every tenant limit this replica has seen, with its usage and demand."""


class CapSink(Protocol):
    def set_caps(self, caps: Mapping[LimitKey, float]) -> None:
        """This replica's caps from now on; a key not given keeps its current cap."""
