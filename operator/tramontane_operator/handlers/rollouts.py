"""The routers' figures of a ModelDeployment's adapter versions, read from their Leases on the
hub (`tramontane_api.rollouts`) while one of its adapters has a canary; summed by the pure
`reconcile.rollout.figures_of`."""

from __future__ import annotations

import logging
import time

from tramontane_api.rollouts import ROUTER_LEASE_LABELS
from tramontane_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from tramontane_kube import LEASE, ApiError, Unreachable
from tramontane_operator.reconcile.rollout import Figures, figures_of

from .runtime import Runtime

log = logging.getLogger(__name__)


async def router_figures(
    rt: Runtime, md: ModelDeployment, previous: ModelDeploymentStatus | None
) -> dict[str, Figures]:
    """What the routers saw of `md`'s adapter versions (served name -> figures, summed over
    the live router replicas' Leases), read only while a canary runs; nothing when the
    routers' namespace is unknown or cannot be read (a canary then holds its step, and the
    routers' own verdicts still keep a failing one from the clients)."""
    rows = (previous.adapter_versions if previous else None) or []
    if not any(v.state == "Canary" for r in rows for v in r.versions):
        return {}
    namespace = rt.settings.routers_namespace()
    if namespace is None:
        return {}
    try:
        leases, _ = await rt.hub.list(LEASE, namespace, dict(ROUTER_LEASE_LABELS))
    except (ApiError, Unreachable) as exc:
        log.warning("cannot read the routers' leases in %s: %s", namespace, exc)
        return {}
    return figures_of(leases, md.metadata.namespace or "default", md.metadata.name, time.time())
