"""Kubernetes timestamps: `MicroTime` (Lease `renewTime`, `acquireTime`) written and parsed.

The API server stores a MicroTime as RFC 3339 with microseconds in UTC (`...T12:00:00.123456Z`)
and accepts the same on writes; `Time` fields (whole seconds) parse with the same function.
Shared by the router's budget exchange and leader election, both of which write Leases.
"""

from __future__ import annotations

import datetime


def micro_time(epoch_s: float) -> str:
    """`epoch_s` (seconds since the epoch) as a Kubernetes MicroTime string."""
    moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """A Kubernetes Time or MicroTime string as epoch seconds; ValueError when it is not one.

    A timestamp without an offset is read as UTC (the API server always writes one)."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
