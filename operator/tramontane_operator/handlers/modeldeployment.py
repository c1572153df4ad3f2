"""ModelDeployments: observe -> place -> render -> apply -> status, in every cluster.

ModelDeployments are reconciled by a controller of our own rather than by Kopf handlers (as
controller-runtime does it): the hub cache's informer feeds a work queue, and a pool of
workers runs the level-triggered `reconcile` for one key at a time. An object is queued at
high priority when it appears, when its spec changes (its generation, as controller-runtime's
`GenerationChangedPredicate`: the echoes of our own status writes queue nothing) and when it
is being deleted; at low priority when one of its RayServices changes in any member, a
member changes health, and on resync. New work thus goes before refreshes. Under load (more
new or changed objects waiting), a pass only brings the children to the spec and queues the
object again at low priority for its finalizer, status and Events: in a burst of creates every
pool is started before any status is written. The GPUs a pass places are held in the ledger
at once, not when the status comes back. Kopf's per-event machinery (a per-object task, cause
detection, progress storage) cost more CPU per object than the reconcile itself; the other
kinds keep their Kopf handlers.

Children are read from each member's informer cache, created or patched by their
deterministic name, and deleted from clusters that are no longer placed; the status is
computed by the pure `reconcile` package and written only when it changed. Our finalizer is
added by the first full pass (in parallel with it, not before it); an object deleted before
it lands is cleaned up from its `DELETED` event. Deletion removes the children in every
cluster before the finalizer goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from tramontane_api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from tramontane_api.validate import validate_object
from tramontane_kube import MODELDEPLOYMENT, RAYSERVICE, ApiError, NotFound, Unreachable
from tramontane_operator.builders.labels import (
    FINALIZER,
    OWNER_NAME_LABEL,
    OWNER_NAMESPACE_LABEL,
)
from tramontane_operator.kube import MemberCluster
from tramontane_operator.kube.workqueue import HIGH, LOW, QueueClosed
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.placement import REASON_FAILOVER, ClusterView, place, pool_gpus
from tramontane_operator.reconcile import (
    ObservedPool,
    compute_status,
    current_replicas,
    desired_children,
    failed_clusters,
    invalid_spec_status,
    status_changed,
)
from tramontane_operator.reconcile.conditions import DEGRADED, PLACED, PROGRESSING, READY, find

from .events import EventRecorder
from .indexes import Indexes
from .runtime import Key, Runtime

log = logging.getLogger(__name__)

SYNC_WAIT_S = 2.0  # how long a reconcile waits for a new member's cache before reading directly


class ModelDeploymentController:
    """The work queue and workers reconciling every ModelDeployment in the hub cache."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.workers = rt.settings.reconcile_workers
        self._tombstones: dict[Key, Mapping[str, Any]] = {}
        self._deferred: set[Key] = set()  # keys whose last pass left the status for later
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.rt.indexes.modeldeployments.on_event = self._observed
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"modeldeployment worker {i}")
            for i in range(self.workers)
        ]

    async def stop(self) -> None:
        self.rt.md_queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _observed(self, cache_key: tuple[str, str], obj: Mapping[str, Any], gone: bool) -> None:
        """Every watch event, once the cache has it: queue the object if it needs a reconcile."""
        key = (cache_key[0] or "default", cache_key[1])
        if gone:
            if self.rt.known(key):  # deleted before our finalizer landed: clean up anyway
                self._tombstones[key] = obj
                self.rt.md_queue.add(key, HIGH)
            return
        if self.rt.trigger_changed(key, _trigger(obj)):
            self.rt.md_queue.add(key, HIGH)

    async def _worker(self) -> None:
        await self.rt.indexes.synced()
        queue = self.rt.md_queue
        while True:
            try:
                key = await queue.get()
            except QueueClosed:
                return
            requeue: tuple[float, int] | None = None
            try:
                requeue = await self._process(key)
            except Exception:
                log.exception("reconcile of ModelDeployment %s/%s failed", *key)
                requeue = (self.rt.settings.retry_delay_s, HIGH)
            finally:
                queue.done(key)
            if requeue is not None:
                queue.add_after(key, *requeue)

    async def _process(self, key: Key) -> tuple[float, int] | None:
        """One reconcile (or cleanup) of `key`; when to look at it again, and how urgently."""
        rt = self.rt
        raw = rt.indexes.modeldeployments.raw((key[0], key[1]))
        if raw is None:
            self._deferred.discard(key)
            tombstone = self._tombstones.pop(key, None)
            if tombstone is not None:
                await _cleanup_gone(rt, tombstone)
            return None
        self._tombstones.pop(key, None)
        finalizers = (raw.get("metadata") or {}).get("finalizers") or []
        if raw["metadata"].get("deletionTimestamp"):
            if FINALIZER not in finalizers:
                return None
            rt.reconciling(key, _trigger(raw))
            try:
                await cleanup(rt, raw)
                await _remove_finalizer(rt, raw, finalizers)
            except kopf.TemporaryError as exc:
                return (exc.delay or rt.settings.retry_delay_s, HIGH)
            except (ApiError, Unreachable) as exc:
                log.info("finalizer of %s/%s not removed yet: %s", *key, exc)
                return (rt.settings.retry_delay_s, HIGH)
            return None
        # Under load (other new or changed objects wait), this pass only brings the children
        # to the spec: the finalizer, the status and its Events follow in a low-priority pass,
        # so a burst of creates gets every pool started before any status is written. That
        # follow-up pass does everything, however busy the queue is by then.
        children_only = key not in self._deferred and rt.md_queue.waiting(HIGH) > 0
        if children_only:
            self._deferred.add(key)
        else:
            self._deferred.discard(key)
        adding = None
        if FINALIZER not in finalizers and not children_only:
            # In parallel with the reconcile, not before it.
            adding = asyncio.create_task(_add_finalizer(rt, raw, finalizers))
        requeue: tuple[float, int] | None = (rt.settings.resync_interval_s, LOW)
        if children_only:
            requeue = (0.0, LOW)
        try:
            await reconcile(rt, raw, rt.indexes, write_status=not children_only)
        except kopf.TemporaryError as exc:
            requeue = (exc.delay or rt.settings.retry_delay_s, HIGH)
        except kopf.PermanentError:
            requeue = None  # the spec is invalid: a new generation queues it again
        finally:
            if adding is not None and not await adding:
                requeue = (rt.settings.retry_delay_s, HIGH)
        return requeue


def _trigger(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile must follow: the object's identity, spec generation and deletion."""
    meta = body.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))


async def _add_finalizer(rt: Runtime, raw: Mapping[str, Any], finalizers: list[str]) -> bool:
    """Append our finalizer (a JSON patch: others' finalizers added meanwhile stay)."""
    namespace, name = _key(raw)
    ops: list[dict[str, Any]]
    if finalizers:
        ops = [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
    else:
        ops = [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    try:
        await rt.hub.patch(MODELDEPLOYMENT, namespace, name, ops)
    except NotFound:
        return True  # deleted meanwhile: the DELETED event cleans up
    except (ApiError, Unreachable) as exc:
        log.info("finalizer of %s/%s not added yet: %s", namespace, name, exc)
        return False
    return True


async def _remove_finalizer(rt: Runtime, raw: Mapping[str, Any], finalizers: list[str]) -> None:
    """Remove our finalizer, only if it is still where we saw it (a JSON patch `test`)."""
    namespace, name = key = _key(raw)
    index = finalizers.index(FINALIZER)
    path = f"/metadata/finalizers/{index}"
    ops = [{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]
    with contextlib.suppress(NotFound):
        await rt.hub.patch(MODELDEPLOYMENT, namespace, name, ops)
    rt.forget(key)


async def _cleanup_gone(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Best effort for an object deleted in the instant between its first reconcile (which
    does not wait for the finalizer patch, landing the same moment) and that patch."""
    try:
        await cleanup(rt, body)
        rt.forget(_key(body))
    except kopf.TemporaryError as exc:
        log.warning("%s/%s deleted without its finalizer; %s", *_key(body), exc)


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "default", meta["name"])


async def reconcile(
    rt: Runtime, body: Mapping[str, Any], idx: Indexes, write_status: bool = True
) -> None:
    """One pass for the object `body` (a hub cache entry): at most one per object at a time.
    Without `write_status`, only the children are brought to the spec (an invalid spec is
    still reported)."""
    namespace, name = key = _key(body)
    with reconcile_scope("ModelDeployment", namespace, name) as scope:
        raw = dict(body)
        rt.reconciling(key, _trigger(raw))
        if raw.get("metadata", {}).get("deletionTimestamp"):
            scope.outcome = "deleting"
            return
        previous = rt.last_status(raw) or _status_of(raw)
        now = datetime.now(UTC)
        try:
            md = ModelDeployment.model_validate(raw)
            views = await rt.cluster_views(idx.compute_clusters(), {})
            observed = await _observe(rt, md, views)
            # No await from reading the ledger to writing it: every concurrent pass places
            # against the GPUs the others have placed, whether or not their status is out.
            views = _with_allocations(views, rt.gpus.held_by_others(key))
            failed = failed_clusters(list(observed.values()), md)
            decision = place(md, list(views.values()), _current(md, observed), failed)
            # Held from now on, not from when the status comes back: concurrent reconciles
            # (and passes that leave the status for later) must not place onto the same GPUs.
            rt.gpus.set(key, pool_gpus(md, decision.replicas))
            adapter_uris = idx.adapter_uris(namespace)
            desired = desired_children(
                md, decision, views, rt.build, idx.tenant_of(namespace), adapter_uris
            )
        except (ValidationError, ValueError) as exc:
            scope.outcome = "invalid"
            message = _invalid_message(raw, exc)
            status = invalid_spec_status(_generation(raw), message, previous, now)
            await _write_status(rt, raw, previous, status)
            raise kopf.PermanentError(f"invalid spec: {message}") from exc
        except (ApiError, Unreachable) as exc:
            scope.outcome = "retry"
            raise kopf.TemporaryError(str(exc), delay=rt.settings.retry_delay_s) from exc
        try:
            errors = await _apply(rt, md, desired, observed)
            pools = [observed[c] for c in decision.replicas if c in observed]
            if not write_status:
                scope.outcome = "children"
                return
            status = compute_status(md, decision, pools, previous, now, adapter_uris)
            await _write_status(rt, raw, previous, status)
        except (ApiError, Unreachable) as exc:  # the hub itself failed us: retry soon
            scope.outcome = "retry"
            raise kopf.TemporaryError(str(exc), delay=rt.settings.retry_delay_s) from exc
        scope.clusters = ",".join(decision.replicas)
        scope.outcome = status.phase or "unknown"
        rt.md_phases.set(namespace, name, status.phase)
        if errors:
            scope.outcome = "retry"
            raise kopf.TemporaryError("; ".join(errors), delay=rt.settings.retry_delay_s)


def _with_allocations(
    views: Mapping[str, ClusterView], allocations: Mapping[str, Mapping[str, int]]
) -> dict[str, ClusterView]:
    return {
        name: dataclasses.replace(view, gpus_allocated=dict(allocations.get(name, {})))
        for name, view in views.items()
    }


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
    for cluster, pool in observed.items():
        if pool.rayservice is not None and cluster not in current:
            groups = (pool.rayservice.get("spec") or {}).get("rayClusterConfig", {})
            current[cluster] = sum(
                int(g.get("replicas") or 0) for g in groups.get("workerGroupSpecs") or []
            )
    return current


async def _apply(
    rt: Runtime,
    md: ModelDeployment,
    desired: Mapping[str, dict[str, Any]],
    observed: dict[str, ObservedPool],
) -> list[str]:
    """Create/patch desired children, delete the others; update `observed`; return errors."""
    namespace, name = md.metadata.namespace or "default", md.metadata.name

    async def one(cluster: str) -> str | None:
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
            return str(exc)
        return None

    results = await asyncio.gather(*(one(c) for c in list(observed)))
    return [r for r in results if r]


async def _write_status(
    rt: Runtime,
    raw: Mapping[str, Any],
    previous: ModelDeploymentStatus | None,
    status: ModelDeploymentStatus,
) -> None:
    if not status_changed(previous, status):
        return
    namespace, name = _key(raw)
    if not await rt.write_status(MODELDEPLOYMENT, namespace, name, previous, status):
        return  # deleted meanwhile
    rt.remember_status(raw, status)
    _transition_events(rt.events, raw, previous, status)


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
    """Delete the children in every member cluster; TemporaryError until all are gone."""
    namespace, name = _key(body)
    with reconcile_scope("ModelDeployment", namespace, name) as scope:
        scope.outcome = "cleanup"
        waiting: list[str] = []
        for cc in rt.indexes.compute_clusters():
            cluster = cc.metadata.name
            member = await rt.ensure_member(cc)
            if member is None or not member.probe.reachable:
                waiting.append(f"{cluster} (unreachable)")
                continue
            if not member.probe.kuberay_installed:
                continue
            try:
                if await _delete_child(member, namespace, name):
                    waiting.append(f"{cluster} (deleting)")
            except (Unreachable, ApiError) as exc:
                waiting.append(f"{cluster} ({exc})")
        if waiting:
            scope.outcome = "retry"
            raise kopf.TemporaryError(
                f"children not yet deleted in: {', '.join(waiting)}",
                delay=rt.settings.retry_delay_s,
            )


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
