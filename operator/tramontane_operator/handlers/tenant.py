"""Tenants: usage and conditions from what the tenant holds in the ledger, kept current.

Reconciled by the kind's `Controller` (`controller.py`): a Tenant is queued when it appears
or its spec changes, and (coalesced, at most once a second) when a ModelDeployment,
FineTuneJob or Evaluation in one of its namespaces changes. The status is the pure
`reconcile.tenant.compute_tenant_status` of the workloads the ledger holds in its namespaces,
written only when it changed. Admission itself is decided by the workloads' own controllers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tramontane_api.v1alpha1 import Tenant
from tramontane_kube import TENANT
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.reconcile.conditions import status_differs
from tramontane_operator.reconcile.tenant import compute_tenant_status

from .controller import Body, Controller, Key, Requeue
from .parsing import parse_resource
from .runtime import EVALUATIONS, FINETUNEJOBS, MODELDEPLOYMENTS, TENANTS, Runtime

log = logging.getLogger(__name__)

COALESCE_S = 1.0  # a burst of workload changes refreshes a tenant's status once


class Tenants:
    """The controller of Tenants."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cache = rt.indexes.tenant_objects
        self.controller = Controller(
            TENANTS,
            cache.raw,
            cache.object_keys,
            self._process,
            workers=2,
            ready=rt.ready,
            queue=rt.work_queue(),
        )
        cache.listeners.append(self.controller.observed)
        for kind in (MODELDEPLOYMENTS, FINETUNEJOBS, EVALUATIONS):
            rt.indexes.cache(kind).listeners.append(self._workload_changed)
        rt.controllers[TENANTS] = self.controller

    def _workload_changed(self, key: Key, _obj: Mapping[str, Any], _gone: bool) -> None:
        name = self.rt.indexes.tenant_of(key[0])
        if name is not None:
            self.controller.queue.add_after(("", name), COALESCE_S)

    async def _process(self, key: Key, raw: Body | None) -> Requeue | None:
        if raw is None:
            self.rt.forget(TENANTS, key)
            return None
        await report(self.rt, raw)
        return Requeue(self.rt.settings.resync_interval_s)


async def report(rt: Runtime, body: Mapping[str, Any]) -> None:
    name = body["metadata"]["name"]
    with reconcile_scope("Tenant", None, name) as scope:
        tenant = parse_resource(Tenant, body, scope)
        workloads = rt.ledger.held_in(tenant.spec.namespaces)
        status = compute_tenant_status(tenant, workloads, rt.indexes.tenants(), datetime.now(UTC))
        scope.outcome = status.phase or "unknown"
        if status_differs(tenant.status, status):
            await rt.write_status(TENANT, None, name, tenant.status, status)
