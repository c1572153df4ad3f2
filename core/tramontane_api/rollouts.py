"""What the routers tell the operator about adapter versions, in their Leases.

Every router replica renews a Lease on the hub every second (the budget exchange,
`tramontane_router.limits.exchange`), labelled `ROUTER_LEASE_LABELS`. Beside its budget it
writes, in the annotation `ROLLOUTS_ANNOTATION`, what it saw of every adapter version that
has a canary in progress, over its last window (30 s), as compact JSON:
`{"<namespace>/<deployment>/<served name>": [requests, errors, p99_ms, "breach"]}`, where
`breach` is its own verdict on a canary ("" when none). The operator sums the replicas'
figures and acts on any verdict (`tramontane_operator.reconcile.rollout`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ROLLOUTS_ANNOTATION: Final = "tramontane.dev/rollouts"
ROUTER_LEASE_LABELS: Final = {
    "app.kubernetes.io/managed-by": "tramontane",
    "app.kubernetes.io/component": "router",
}

VersionKey = tuple[str, str, str]  # (namespace, deployment, served name)


@dataclass(frozen=True)
class VersionFigures:
    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    breach: str = ""


def encode_rollouts(figures: Mapping[VersionKey, VersionFigures]) -> str:
    body = {
        "/".join(k): [f.requests, f.errors, f.p99_ms, f.breach] for k, f in sorted(figures.items())
    }
    return json.dumps(body, separators=(",", ":"))


def decode_rollouts(text: str) -> dict[VersionKey, VersionFigures]:
    """Entries that do not parse are left out."""
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    out: dict[VersionKey, VersionFigures] = {}
    for key, value in body.items() if isinstance(body, dict) else ():
        parts = str(key).split("/", 2)
        if len(parts) != 3 or not isinstance(value, list) or len(value) != 4:
            continue
        with contextlib.suppress(TypeError, ValueError):
            requests, errors, p99, breach = value
            out[(parts[0], parts[1], parts[2])] = VersionFigures(
                int(requests), int(errors), None if p99 is None else float(p99), str(breach)
            )
    return out
