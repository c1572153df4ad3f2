"""ModelDeployments: admit -> place -> render -> apply -> status, in every cluster.

Reconciled by the kind's `Controller` (`controller.py`): the hub cache queues a key when the
object appears, its spec changes or it is being deleted (high priority), and when one of its
RayServices changes in any member, a member changes health, quota or GPUs are released, or
on resync (low priority). Under load (more new or changed objects waiting), a pass only
brings the children to the spec and queues the object again at low priority for its status
and Events: in a burst of creates every pool is started before any status is written.

A pass: our finalizer first (before any child exists, so none can be orphaned by a delete);
then, in one synchronous step (no `await`: no other decision interleaves), admission against
the tenant's quota and placement against the one GPU ledger, whose entry for the deployment
is updated in the same step; then the I/O: children are read from each member's informer
cache, created or patched by their deterministic name, and deleted from clusters no longer
placed; the status is computed by the pure `reconcile` package and written only when it
changed. A deployment the tenant's quota holds back is `Queued` with its position and creates
nothing. Placement only uses the tenant's `allowedClusters`. Deletion removes the children in
every cluster before the finalizer goes, and releases the deployment's GPUs and quota.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tramontane_api.v1alpha1 import ComputeCluster, ModelDeployment, ModelDeploymentStatus, Tenant
from tramontane_api.validate import validate_object
from tramontane_kube import MODELDEPLOYMENT, RAYSERVICE, ApiError, Unreachable
from tramontane_operator.builders.labels import (
    OWNER_NAME_LABEL,
    OWNER_NAMESPACE_LABEL,
)
from tramontane_operator.kube import MemberCluster
from tramontane_operator.kube.workqueue import HIGH, LOW
from tramontane_operator.observability import (
    reconcile_scope,
    record_queue_wait,
    track_queue,
)
from tramontane_operator.placement import (
    REASON_FAILOVER,
    ClusterView,
    PlacementDecision,
    place,
    pool_gpus,
)
from tramontane_operator.quotas.ledger import Ledger, merge_clusters
from tramontane_operator.reconcile import (
    ObservedPool,
    compute_status,
    current_replicas,
    desired_children,
    failed_clusters,
    invalid_spec_status,
    queued_status,
    status_changed,
)
from tramontane_operator.reconcile.admission import (
    admission_for,
    capped,
    md_workload,
    replicas_within_quota,
)
from tramontane_operator.reconcile.conditions import DEGRADED, PLACED, PROGRESSING, READY, find
from tramontane_operator.reconcile.finetunejob_inputs import AdmissionResult
from tramontane_operator.reconcile.rollout import step_rollouts, wanted_adapters, with_versions

from .controller import Body, Controller, Invalid, Key, Requeue, Retry, key_of
from .events import EventRecorder
from .finalizers import add_finalizer, has_finalizer, remove_finalizer
from .rollouts import router_figures
from .runtime import MODELDEPLOYMENTS, Runtime, allowed_views, waiting_in, with_allocations

log = logging.getLogger(__name__)

CANARY_INTERVAL_S = 1.0  # how often a ModelDeployment with a canary is looked at
SYNC_WAIT_S = 2.0  # how long a reconcile waits for a new member's cache before reading directly


class ModelDeployments:
    """The controller of ModelDeployments and what its passes share."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        settings = rt.settings
        queue = rt.work_queue(on_get=record_queue_wait)
        track_queue(queue.waiting)
        cache = rt.indexes.modeldeployments
        self.controller = Controller(
            MODELDEPLOYMENTS,
            cache.raw,
            cache.object_keys,
            self._process,
            workers=settings.reconcile_workers,
            ready=rt.ready,
            queue=queue,
        )
        self._tombstones: dict[Key, Body] = {}
        self._deferred: set[Key] = set()  # keys whose last pass left the status for later
        cache.listeners += [self._observed, self.controller.observed]
        rt.controllers[MODELDEPLOYMENTS] = self.controller

    def _observed(self, key: Key, obj: Body, gone: bool) -> None:
        if gone and self.controller.known(key):  # deleted before our finalizer landed
            self._tombstones[key] = obj

    async def _process(self, key: Key, raw: Body | None) -> Requeue | None:
        """One reconcile (or cleanup) of `key`; when to look at it again, and how urgently."""
        rt = self.rt
        if raw is None:
            self._deferred.discard(key)
            tombstone = self._tombstones.pop(key, None)
            if tombstone is not None:
                await cleanup(rt, tombstone)
            rt.release(MODELDEPLOYMENTS, key)
            rt.forget(MODELDEPLOYMENTS, key)
            return None
        self._tombstones.pop(key, None)
        if raw["metadata"].get("deletionTimestamp"):
            if not has_finalizer(raw):
                return None
            await cleanup(rt, raw)
            await remove_finalizer(rt, MODELDEPLOYMENT, raw)
            rt.release(MODELDEPLOYMENTS, key)
            rt.forget(MODELDEPLOYMENTS, key)
            return None
        if not has_finalizer(raw):  # before any child: a delete can never orphan one
            await add_finalizer(rt, MODELDEPLOYMENT, raw)
        # Under load (other new or changed objects wait), this pass only brings the children
        # to the spec: the status and its Events follow in a low-priority pass, so a burst of
        # creates gets every pool started before any status is written. That follow-up pass
        # does everything, however busy the queue is by then.
        children_only = key not in self._deferred and self.controller.queue.waiting(HIGH) > 0
        if children_only:
            self._deferred.add(key)
        else:
            self._deferred.discard(key)
        canary = await self.reconcile(raw, write_status=not children_only)
        if children_only:
            return Requeue(0.0, LOW)
        if canary:  # a canary in progress is judged every second
            return Requeue(CANARY_INTERVAL_S, LOW)
        return Requeue(rt.settings.resync_interval_s, LOW)

    async def reconcile(self, body: Body, write_status: bool = True) -> bool:
        """One pass for the object `body` (a hub cache entry): at most one per object at a
        time. Without `write_status`, only the children are brought to the spec (an invalid
        spec and a queued deployment are still reported). True while a canary is in
        progress (the caller looks again in a second)."""
        rt, idx = self.rt, self.rt.indexes
        namespace, name = key_of(body)
        with reconcile_scope("ModelDeployment", namespace, name) as scope:
            raw = dict(body)
            previous = _previous(rt, raw)
            now = datetime.now(UTC)
            try:
                md = ModelDeployment.model_validate(raw)
                views = await rt.cluster_views(idx.compute_clusters(), {})
                observed = await _observe(rt, md, views)
                tenant = idx.tenant_object(namespace)
                # One synchronous step from reading the ledger to writing it.
                outcome = self._decide(md, tenant, views, observed)
                if isinstance(outcome, AdmissionResult):
                    scope.outcome = "Queued"
                    position, why = outcome.queue_position, outcome.reason
                    status = queued_status(md, position, why, previous, now)
                    await _write_status(rt, raw, previous, status)
                    rt.phases[MODELDEPLOYMENTS].set(namespace, name, status.phase)
                    return False
                decision = outcome
                adapter_uris = idx.adapter_uris(namespace)
                rollout = step_rollouts(
                    wanted_adapters(md, adapter_uris),
                    previous.adapter_versions if previous else None,
                    await router_figures(rt, md, previous),
                    now,
                )
                md = with_versions(md, rollout.versions)
                desired = desired_children(
                    md, decision, views, rt.build, idx.tenant_of(namespace), adapter_uris
                )
            except (ValidationError, ValueError) as exc:
                scope.outcome = "invalid"
                message = _invalid_message(raw, exc)
                status = invalid_spec_status(_generation(raw), message, previous, now)
                await _write_status(rt, raw, previous, status)
                raise Invalid(f"invalid spec: {message}") from exc
            except (ApiError, Unreachable) as exc:
                scope.outcome = "retry"
                raise Retry(str(exc)) from exc
            try:
                errors = await _apply(rt, md, desired, observed)
                if not write_status:
                    scope.outcome = "children"
                    return rollout.active
                status = pass_status(md, decision, observed, previous, now, adapter_uris, rt.ledger)
                if await _write_status(rt, raw, previous, status):
                    for event in rollout.events:
                        rt.events.post(md, event.type, event.reason, event.message)
            except (ApiError, Unreachable) as exc:  # the hub itself failed us: retry
                scope.outcome = "retry"
                raise Retry(str(exc)) from exc
            scope.clusters = ",".join(decision.replicas)
            scope.outcome = status.phase or "unknown"
            rt.phases[MODELDEPLOYMENTS].set(namespace, name, status.phase)
            if errors:
                message = "; ".join(str(e) for e in errors)
                if all(isinstance(e, ApiError) and e.status == 422 for e in errors):
                    # What we render is refused: only a new spec (or operator) can fix it.
                    scope.outcome = "invalid"
                    rt.events.post(md, "Warning", "InvalidChild", message[:1024])
                    raise Invalid(message)
                scope.outcome = "retry"
                raise Retry(message)
            return rollout.active

    def _decide(
        self,
        md: ModelDeployment,
        tenant: Tenant | None,
        views: Mapping[str, ClusterView],
        observed: Mapping[str, ObservedPool],
    ) -> PlacementDecision | AdmissionResult:
        """Admission, then placement, and the ledger entry they make: synchronous, so no other
        decision reads the ledger between this one reading and writing it."""
        rt = self.rt
        workload = md_workload(md)
        note = ""
        if workload.key not in rt.ledger and tenant is not None:
            namespaces = tenant.spec.namespaces
            holding = rt.ledger.held_in(namespaces)
            others = waiting_in(rt.indexes, namespaces, holding)
            admission = admission_for(workload, tenant, holding, others)
            if not admission.admitted:
                return admission
        elif tenant is not None:  # admitted: a grown maxReplicas gets what the quota has left
            cap = replicas_within_quota(md, tenant, rt.ledger.held_in(tenant.spec.namespaces))
            if cap is not None:
                md = capped(md, cap)
                workload = md_workload(md)
                note = f"; at most {cap} replicas: the tenant's GPU quota has no room for more"
        allocated = rt.ledger.allocations(exclude=workload.key)
        views = with_allocations(allowed_views(views, tenant), allocated)
        failed = failed_clusters(list(observed.values()), md)
        decision = place(md, list(views.values()), _current(md, observed), failed)
        decision = _unseen_kept(md, decision, observed)
        # Held from now on, not from when the status comes back; pools still running where
        # they are no longer placed hold their GPUs until they are gone, and so do pools in
        # clusters that cannot be read now: they may well run (the status lists them, see
        # `_left_behind`, so a restart counts them too).
        running = pool_gpus(md, _existing(observed))
        unseen = _left_behind(md, observed, decision.replicas)
        placed = merge_clusters(pool_gpus(md, decision.replicas), running, pool_gpus(md, unseen))
        rt.ledger.hold(dataclasses.replace(workload, clusters=placed))
        return dataclasses.replace(decision, message=decision.message + note) if note else decision


def pass_status(
    md: ModelDeployment,
    decision: PlacementDecision,
    observed: Mapping[str, ObservedPool],
    previous: ModelDeploymentStatus | None,
    now: datetime,
    adapter_uris: Mapping[str, str] | None,
    ledger: Ledger,
) -> ModelDeploymentStatus:
    """The status a pass writes: its pools, those left behind in unreachable clusters, and
    the GPUs the ledger counts it for against its tenant's quota."""
    pools = [observed[c] for c in decision.replicas if c in observed]
    behind = _left_behind(md, observed, decision.replicas)
    status = compute_status(md, decision, pools, previous, now, adapter_uris, behind)
    return with_quota(status, ledger, md)


def _unseen_kept(
    md: ModelDeployment, decision: PlacementDecision, observed: Mapping[str, ObservedPool]
) -> PlacementDecision:
    """A pool placed in a cluster that cannot be read now keeps the replicas the last status
    gave it where that is more: the change cannot reach it, and it may well run at that size
    (the status and the ledger say so until the cluster answers and the pool is patched)."""
    last = current_replicas(md)
    kept = {
        c: last[c]
        for c, n in decision.replicas.items()
        if c in observed and not observed[c].reachable and last.get(c, 0) > n
    }
    if not kept:
        return decision
    return dataclasses.replace(decision, replicas={**decision.replicas, **kept})


def _left_behind(
    md: ModelDeployment, observed: Mapping[str, ObservedPool], placed: Mapping[str, int]
) -> dict[str, int]:
    """Pools the last status lists in clusters that cannot be read now, not placed there
    any more: replicas per cluster (they may run until their cluster answers)."""
    return {
        c: n
        for c, n in current_replicas(md).items()
        if c in observed and not observed[c].reachable and c not in placed
    }


def with_quota(
    status: ModelDeploymentStatus, ledger: Ledger, md: ModelDeployment
) -> ModelDeploymentStatus:
    """`status` with the GPUs the ledger counts the deployment for against its quota
    (`quotaGpus`): what a restart rebuilds the ledger from."""
    held = ledger.get(md_workload(md).key)
    if held is None or not held.gpus:
        return status
    return status.model_copy(update={"quota_gpus": sum(held.gpus.values())})


def _existing(observed: Mapping[str, ObservedPool]) -> dict[str, int]:
    """Worker replicas per cluster of the children that exist now."""
    out = {}
    for cluster, pool in observed.items():
        if pool.rayservice is not None:
            out[cluster] = _replicas(pool.rayservice)
    return out


def _replicas(rayservice: Mapping[str, Any]) -> int:
    groups = (rayservice.get("spec") or {}).get("rayClusterConfig", {})
    return sum(int(g.get("replicas") or 0) for g in groups.get("workerGroupSpecs") or [])


def _previous(rt: Runtime, raw: Mapping[str, Any]) -> ModelDeploymentStatus | None:
    last = rt.last_status(MODELDEPLOYMENTS, raw)
    if isinstance(last, ModelDeploymentStatus):
        return last
    return _status_of(raw)


def _status_of(raw: Mapping[str, Any]) -> ModelDeploymentStatus | None:
    status = raw.get("status")
    if not status:
        return None
    try:
        return ModelDeploymentStatus.model_validate(status)
    except ValidationError:
        return None


def _generation(raw: Mapping[str, Any]) -> int | None:
    value = (raw.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) else None


def _invalid_message(raw: Mapping[str, Any], exc: Exception) -> str:
    problems = [str(p) for p in validate_object(raw)] if isinstance(exc, ValidationError) else []
    return "; ".join(problems) or str(exc)


async def _observe(
    rt: Runtime, md: ModelDeployment, views: Mapping[str, ClusterView]
) -> dict[str, ObservedPool]:
    """The RayService named like `md` in every known cluster (None where absent or unknown)."""
    namespace, name = md.metadata.namespace or "default", md.metadata.name

    async def one(view: ClusterView) -> ObservedPool:
        member = rt.clusters.get(view.name)
        endpoint = view.grpc_endpoint
        if member is None or not member.probe.reachable:
            return ObservedPool(view.name, False, None, endpoint)
        if not member.probe.kuberay_installed:
            return ObservedPool(view.name, True, None, endpoint)
        try:
            child = await _read_child(member, namespace, name)
        except Unreachable as exc:
            rt.clusters.report_unreachable(view.name, exc.cause)
            return ObservedPool(view.name, False, None, endpoint)
        return ObservedPool(view.name, True, child, endpoint)

    pools = await asyncio.gather(*(one(v) for v in views.values()))
    return {p.cluster: p for p in pools}


async def _read_child(member: MemberCluster, namespace: str, name: str) -> dict[str, Any] | None:
    informer = member.informer
    if not informer.synced.is_set():
        try:
            await asyncio.wait_for(informer.synced.wait(), SYNC_WAIT_S)
        except TimeoutError:
            return await member.client.get(RAYSERVICE, namespace, name)
    return informer.get(namespace, name)


def _current(md: ModelDeployment, observed: Mapping[str, ObservedPool]) -> dict[str, int]:
    """Replicas per cluster now: the last status, plus children found that it does not list
    (the operator may have stopped between creating a child and writing the status)."""
    current = current_replicas(md)
    for cluster, replicas in _existing(observed).items():
        current.setdefault(cluster, replicas)
    return current


async def _apply(
    rt: Runtime,
    md: ModelDeployment,
    desired: Mapping[str, dict[str, Any]],
    observed: dict[str, ObservedPool],
) -> list[str | ApiError]:
    """Create/patch desired children, delete the others; update `observed`; return errors."""
    namespace, name = md.metadata.namespace or "default", md.metadata.name

    async def one(cluster: str) -> str | ApiError | None:
        pool, member = observed.get(cluster), rt.clusters.get(cluster)
        if pool is None or member is None or not pool.reachable:
            return None
        if not member.probe.kuberay_installed:
            return f"{cluster}: KubeRay is not installed" if cluster in desired else None
        try:
            if cluster in desired:
                if pool.rayservice is None:
                    await member.ensure_namespace(namespace)
                child, outcome = await member.client.apply(
                    RAYSERVICE, desired[cluster], pool.rayservice
                )
                child = member.informer.remember(child)
                observed[cluster] = dataclasses.replace(pool, rayservice=child)
                if outcome == "created":
                    rt.events.post(
                        md, "Normal", "Created", f"RayService {name} created in {cluster}"
                    )
            elif pool.rayservice is not None:
                await member.client.delete(RAYSERVICE, namespace, name)
                member.informer.forget(namespace, name)
                observed[cluster] = dataclasses.replace(pool, rayservice=None)
                rt.events.post(md, "Normal", "Deleted", f"RayService {name} deleted from {cluster}")
        except Unreachable as exc:
            rt.clusters.report_unreachable(cluster, exc.cause)
            observed[cluster] = dataclasses.replace(pool, reachable=False, rayservice=None)
        except ApiError as exc:
            return exc
        return None

    results = await asyncio.gather(*(one(c) for c in list(observed)))
    return [r for r in results if r]


async def _write_status(
    rt: Runtime,
    raw: Mapping[str, Any],
    previous: ModelDeploymentStatus | None,
    status: ModelDeploymentStatus,
) -> bool:
    """Write `status` if it changed; True when it was written."""
    if not status_changed(previous, status):
        return False
    namespace, name = key_of(raw)
    if not await rt.write_status(MODELDEPLOYMENT, namespace, name, previous, status):
        return False  # deleted meanwhile
    rt.remember_status(MODELDEPLOYMENTS, raw, status)
    _transition_events(rt.events, raw, previous, status)
    return True


def _transition_events(
    events: EventRecorder,
    raw: Mapping[str, Any],
    previous: ModelDeploymentStatus | None,
    status: ModelDeploymentStatus,
) -> None:
    old = previous.conditions if previous else None
    moved_from = previous.cluster_names if previous else None
    if moved_from and status.cluster_names and moved_from != status.cluster_names:
        placed = find(status.conditions, PLACED)
        reason = placed.reason if placed is not None else "Moved"
        kind = "Warning" if reason == REASON_FAILOVER else "Normal"
        events.post(raw, kind, reason, f"pools moved from {moved_from} to {status.cluster_names}")
    progressing = find(status.conditions, PROGRESSING)
    starting = progressing is not None and progressing.status == "True"
    for type_, good in ((READY, "True"), (DEGRADED, "False"), (PLACED, "True")):
        now, before = find(status.conditions, type_), find(old, type_)
        if now is None or (before is not None and before.status == now.status):
            continue
        if before is None and now.status == good and type_ != READY:
            continue  # a healthy start is not news; Ready becoming True is
        if before is None and type_ == READY and now.status != good and starting:
            continue  # not Ready yet while its pools are being created: no Warning for that
        kind = "Normal" if now.status == good else "Warning"
        events.post(raw, kind, now.reason, f"{type_}={now.status}: {now.message}".rstrip(": "))


async def cleanup(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Delete the children in every member cluster; `Retry` until all are gone."""
    namespace, name = key_of(body)
    with reconcile_scope("ModelDeployment", namespace, name) as scope:
        scope.outcome = "cleanup"

        async def one(cc: ComputeCluster) -> str | None:
            """Why the child there is not gone yet (None: gone, or never there)."""
            cluster = cc.metadata.name
            member = await rt.ensure_member(cc)
            if member is None or not member.probe.reachable:
                return f"{cluster} (unreachable)"
            if not member.probe.kuberay_installed:
                return None
            try:
                return (
                    f"{cluster} (deleting)"
                    if await _delete_child(member, namespace, name)
                    else None
                )
            except (Unreachable, ApiError) as exc:
                return f"{cluster} ({exc})"

        # Every member at once: one slow member holds up no other's cleanup.
        outcomes = await asyncio.gather(*(one(cc) for cc in rt.indexes.compute_clusters()))
        waiting = [why for why in outcomes if why]
        if waiting:
            scope.outcome = "retry"
            raise Retry(f"children not yet deleted in: {', '.join(waiting)}")


async def _delete_child(member: MemberCluster, namespace: str, name: str) -> bool:
    """Delete our child there; True while it still exists (KubeRay's finalizers run)."""
    child = await member.client.get(RAYSERVICE, namespace, name)
    labels = ((child or {}).get("metadata") or {}).get("labels") or {}
    if child is None or labels.get(OWNER_NAME_LABEL) != name:
        return False
    if labels.get(OWNER_NAMESPACE_LABEL) != namespace:
        return False
    await member.client.delete(RAYSERVICE, namespace, name)
    member.informer.forget(namespace, name)
    return await member.client.get(RAYSERVICE, namespace, name) is not None
