"""ComputeClusters: connect to the member cluster, probe it, report conditions.

Reconciled by the kind's `Controller` (`controller.py`). When a ComputeCluster appears or its
spec changes, the connection is (re)built (kubeconfig Secret re-read) and probed; it is
queued again every `probe_interval_s` (a delayed re-queue), skipping clusters still in their
failure backoff. The status (Reachable, KubeRayInstalled, Ready, allocated GPUs from the
ledger) is written only when it changed; a change of health wakes every ModelDeployment and
FineTuneJob so placement can react. A deleted ComputeCluster's connection is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tramontane_api.v1alpha1 import ComputeCluster, ComputeClusterStatus
from tramontane_kube import COMPUTECLUSTER
from tramontane_operator.observability import reconcile_scope, set_cluster_reachable
from tramontane_operator.reconcile import cluster_status_changed, compute_cluster_status

from .controller import Body, Controller, Key, Requeue, trigger
from .parsing import parse_resource
from .runtime import COMPUTECLUSTERS, Runtime


class ComputeClusters:
    """The controller of ComputeClusters."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cache = rt.indexes.clusters
        self.controller = Controller(
            COMPUTECLUSTERS,
            cache.raw,
            cache.object_keys,
            self._process,
            workers=4,
            ready=rt.ready,
            queue=rt.work_queue(),
        )
        cache.listeners.append(self.controller.observed)
        rt.controllers[COMPUTECLUSTERS] = self.controller
        self._connected: dict[str, tuple[Any, ...]] = {}  # name -> trigger it was built at

    async def _process(self, key: Key, raw: Body | None) -> Requeue | None:
        rt, name = self.rt, key[1]
        if raw is None:
            self._connected.pop(name, None)
            await rt.remove_member(name)
            rt.forget(COMPUTECLUSTERS, key)
            set_cluster_reachable(name, None)
            return None
        refresh = self._connected.get(name) != trigger(raw)
        if refresh or rt.clusters.get(name) is None or rt.clusters.probe_due(name):
            await probe_and_report(rt, raw, refresh=refresh)
            self._connected[name] = trigger(raw)
        return Requeue(rt.settings.probe_interval_s)


async def probe_and_report(rt: Runtime, body: Mapping[str, Any], refresh: bool) -> None:
    name = body["metadata"]["name"]
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
            allocated_gpus=rt.ledger.in_cluster(name),
            previous=previous,
            now=datetime.now(UTC),
            kubernetes_version=probe.kubernetes_version if probe else None,
            error=rt.connection_errors.get(name) or (probe.error if probe else None),
        )
        set_cluster_reachable(name, reachable)
        rt.phases[COMPUTECLUSTERS].set(None, name, status.phase)
        scope.outcome = status.phase or "unknown"
        scope.clusters = name
        if cluster_status_changed(previous, status):
            await rt.write_status(COMPUTECLUSTER, None, name, previous, status)


def _previous(body: Mapping[str, Any]) -> ComputeClusterStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return ComputeClusterStatus.model_validate(dict(raw))
    except ValidationError:
        return None
