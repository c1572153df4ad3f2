"""Tenant handlers: usage and conditions from the tenant's workloads, kept current.

The hub cache holds every Tenant (the FineTuneJob handlers read quotas from it). A per-Tenant
daemon recomputes the status with the pure `reconcile.tenant.compute_tenant_status` from
the ModelDeployments and FineTuneJobs in its namespaces, every poll interval (the FineTuneJob
one), and writes it only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from tramontane_api.v1alpha1 import GROUP, VERSION, Tenant
from tramontane_kube import TENANT
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.reconcile.conditions import status_differs
from tramontane_operator.reconcile.finetunejob_quota import tenant_workloads
from tramontane_operator.reconcile.tenant import compute_tenant_status

from .finetunejob import poll_interval
from .parsing import parse_resource
from .runtime import Runtime

log = logging.getLogger(__name__)

PLURAL = "tenants"


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    interval = poll_interval()

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=1.0)
    async def tenant_usage(stopped: kopf.DaemonStopped, body: kopf.Body, **_: Any) -> None:
        while not stopped:
            try:
                await report(rt, body)
            except Exception:
                log.exception("status of Tenant %s failed", body["metadata"]["name"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), interval)


async def report(rt: Runtime, body: Mapping[str, Any]) -> None:
    name = body["metadata"]["name"]
    await rt.indexes.synced()
    with reconcile_scope("Tenant", None, name) as scope:
        tenant = parse_resource(Tenant, body, scope)
        tenants = rt.indexes.tenants()
        jobs = rt.indexes.jobs()
        deployments = rt.indexes.deployments()
        workloads = tenant_workloads(tenant, jobs, deployments)
        status = compute_tenant_status(tenant, workloads, tenants, datetime.now(UTC))
        scope.outcome = status.phase or "unknown"
        if status_differs(tenant.status, status):
            await rt.write_status(TENANT, None, name, tenant.status, status)
