"""Tenant handlers: usage and conditions from the tenant's workloads, kept current.

An index holds every Tenant (the FineTuneJob handlers read quotas from it). A per-Tenant
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
from pydantic import ValidationError

from tramontane_operator.api.v1alpha1 import GROUP, VERSION, Tenant
from tramontane_operator.kube import TENANT
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.reconcile.conditions import status_differs
from tramontane_operator.reconcile.finetunejob_quota import tenant_workloads
from tramontane_operator.reconcile.tenant import compute_tenant_status

from .finetunejob import INDEX_ID, TENANT_INDEX_ID, poll_interval
from .indexes import ALL, Indexes
from .parsing import parse_resource
from .runtime import Runtime

log = logging.getLogger(__name__)

PLURAL = "tenants"


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    interval = poll_interval()

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id=TENANT_INDEX_ID)
    def tenant_objects_idx(body: kopf.Body, **_: Any) -> dict[str, Tenant]:
        try:
            return {ALL: Tenant.model_validate(dict(body))}
        except ValidationError:
            return {}

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=1.0)
    async def tenant_usage(stopped: kopf.DaemonStopped, body: kopf.Body, **kwargs: Any) -> None:
        while not stopped:
            try:
                await report(rt, body, kwargs)
            except Exception:
                log.exception("status of Tenant %s failed", body["metadata"]["name"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), interval)


async def report(rt: Runtime, body: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
    name = body["metadata"]["name"]
    with reconcile_scope("Tenant", None, name) as scope:
        tenant = parse_resource(Tenant, body, scope)
        tenants = list((kwargs.get(TENANT_INDEX_ID) or {}).get(ALL, ()))
        jobs = list((kwargs.get(INDEX_ID) or {}).get(ALL, ()))
        deployments = list(Indexes.from_kwargs(kwargs).modeldeployments.get(ALL, ()))
        workloads = tenant_workloads(tenant, jobs, deployments)
        status = compute_tenant_status(tenant, workloads, tenants, datetime.now(UTC))
        scope.outcome = status.phase or "unknown"
        if status_differs(tenant.status, status):
            await rt.write_status(TENANT, None, name, tenant.status, status)
