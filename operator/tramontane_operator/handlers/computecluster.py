"""ComputeCluster handlers: connect to the member cluster, probe it, report conditions.

On create/update/resume the connection is (re)built (kubeconfig Secret re-read) and probed;
a timer probes again every `probe_interval_s`, skipping clusters still in their failure
backoff. The status (Reachable, KubeRayInstalled, Ready, allocated GPUs) is written only when
it changed; a change of health wakes every ModelDeployment so placement can react.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from tramontane_api.v1alpha1 import GROUP, VERSION, ComputeCluster, ComputeClusterStatus
from tramontane_kube import COMPUTECLUSTER
from tramontane_operator.observability import reconcile_scope, set_cluster_reachable
from tramontane_operator.reconcile import cluster_status_changed, compute_cluster_status

from .parsing import parse_resource
from .runtime import Runtime

PLURAL = "computeclusters"


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def cc_changed(body: kopf.Body, **_: Any) -> None:
        await probe_and_report(rt, body, refresh=True)

    @kopf.timer(GROUP, VERSION, PLURAL, registry=registry, interval=rt.settings.probe_interval_s)
    async def cc_probe(body: kopf.Body, name: str, **_: Any) -> None:
        if rt.clusters.get(name) is None or rt.clusters.probe_due(name):
            await probe_and_report(rt, body, refresh=False)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, optional=True)
    async def cc_deleted(name: str, **_: Any) -> None:
        await rt.remove_member(name)
        rt.cc_phases.set(None, name, None)
        set_cluster_reachable(name, None)


async def probe_and_report(rt: Runtime, body: kopf.Body, refresh: bool) -> None:
    name = body["metadata"]["name"]
    await rt.indexes.synced()  # the GPUs allocated come from every ModelDeployment's status
    with reconcile_scope("ComputeCluster", None, name) as scope:
        cc = parse_resource(ComputeCluster, body, scope)
        known = rt.clusters.get(name) is not None
        member = await rt.ensure_member(cc, refresh=refresh)
        if member is not None and known and not refresh:
            await rt.clusters.probe(name)
        probe = member.probe if member is not None else None
        reachable = probe is not None and probe.reachable
        previous = _previous(body)
        status = compute_cluster_status(
            cc,
            reachable=reachable,
            kuberay_installed=probe.kuberay_installed if probe and reachable else None,
            allocated_gpus=rt.gpus.in_cluster(name),
            previous=previous,
            now=datetime.now(UTC),
            kubernetes_version=probe.kubernetes_version if probe else None,
            error=rt.connection_errors.get(name) or (probe.error if probe else None),
        )
        set_cluster_reachable(name, reachable)
        rt.cc_phases.set(None, name, status.phase)
        scope.outcome = status.phase or "unknown"
        scope.clusters = name
        if cluster_status_changed(previous, status):
            await rt.write_status(COMPUTECLUSTER, None, name, previous, status)


def _previous(body: kopf.Body) -> ComputeClusterStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return ComputeClusterStatus.model_validate(dict(raw))
    except ValidationError:
        return None
