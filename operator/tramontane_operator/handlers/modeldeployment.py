"""ModelDeployment handlers: observe -> place -> render -> apply -> status, in every cluster.

One per-object daemon runs the level-triggered `reconcile`: at once when the object appears
(or the operator starts), then when its spec changes (an event handler compares generations),
when one of its RayServices changes in any member cluster or a member cluster changes health,
and on resync. Children are read from each member's
informer cache, created or patched by their deterministic name, and deleted from clusters that
are no longer placed; the status is computed by the pure `reconcile` package and written only
when it changed. Deletion removes the children in every cluster before the finalizer goes.
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

from tramontane_operator.api.v1alpha1 import GROUP, VERSION, ModelDeployment, ModelDeploymentStatus
from tramontane_operator.api.validate import validate_object
from tramontane_operator.builders.labels import OWNER_NAME_LABEL, OWNER_NAMESPACE_LABEL
from tramontane_operator.kube import (
    MODELDEPLOYMENT,
    RAYSERVICE,
    ApiError,
    MemberCluster,
    Unreachable,
)
from tramontane_operator.observability import reconcile_scope
from tramontane_operator.placement import REASON_FAILOVER, ClusterView, place
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

from .events import post_event
from .indexes import Indexes
from .runtime import Key, Runtime

log = logging.getLogger(__name__)

PLURAL = "modeldeployments"
SYNC_WAIT_S = 2.0  # how long a reconcile waits for a new member's cache before reading directly


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def md_seen(body: kopf.Body, type: str, **kwargs: Any) -> None:
        key = _key(body)
        if type == "DELETED":
            if rt.known(key):  # gone before our finalizer landed: the cleanup never ran
                await _cleanup_gone(rt, body, Indexes.from_kwargs(kwargs))
            return
        # Most events are echoes of our own status writes: only a new spec (generation) or a
        # deletion mark needs the daemon (as controller-runtime's GenerationChangedPredicate).
        if rt.trigger_changed(key, _trigger(body)):
            rt.wake(key)

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=1.0)
    async def md_children(stopped: kopf.DaemonStopped, body: kopf.Body, **kwargs: Any) -> None:
        await _follow(rt, stopped, body, kwargs)

    # Only while deleting: for a live object Kopf then has no change handler to track, so it
    # writes no progress or diff-base annotations (one hub patch and echo event fewer each).
    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, when=_deleting)
    async def md_deleted(body: kopf.Body, **kwargs: Any) -> None:
        await cleanup(rt, body, Indexes.from_kwargs(kwargs))


def _deleting(body: kopf.Body, **_: Any) -> bool:
    return bool(body.get("metadata", {}).get("deletionTimestamp"))


def _trigger(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile must follow: the object's identity, spec generation and deletion."""
    meta = body.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))


async def _cleanup_gone(rt: Runtime, body: Mapping[str, Any], idx: Indexes) -> None:
    """Best effort for an object deleted in the instant between its first reconcile (which
    does not wait for Kopf's finalizer patch, landing the same moment) and that patch."""
    try:
        await cleanup(rt, body, idx)
    except kopf.TemporaryError as exc:
        log.warning("%s/%s deleted without its finalizer; %s", *_key(body), exc)


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "default", meta["name"])


async def _follow(
    rt: Runtime, stopped: kopf.DaemonStopped, body: kopf.Body, kwargs: Mapping[str, Any]
) -> None:
    """The one reconcile loop of a ModelDeployment: at once when it appears (or the operator
    starts), then whenever its spec, a child or a member cluster changes, and on resync."""
    event = rt.wakeup(_key(body))
    delay: float | None = 0.0
    while not stopped:
        if delay != 0.0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), delay or rt.settings.resync_interval_s)
        event.clear()
        delay = None
        if stopped or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            await reconcile(rt, body, Indexes.from_kwargs(kwargs))
        except kopf.TemporaryError as exc:
            delay = exc.delay or rt.settings.retry_delay_s
        except kopf.PermanentError:
            pass  # the spec is invalid: a new generation wakes this loop
        except Exception:
            log.exception("reconcile of %s/%s failed", *_key(body))
            delay = rt.settings.retry_delay_s


async def reconcile(rt: Runtime, body: Mapping[str, Any], idx: Indexes) -> None:
    namespace, name = key = _key(body)
    async with rt.lock(key):
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
                views = await rt.cluster_views(idx.compute_clusters(), rt.gpus.held_by_others(key))
                observed = await _observe(rt, md, views)
                failed = failed_clusters(list(observed.values()), name)
                decision = place(md, list(views.values()), _current(md, observed), failed)
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
                    post_event(md, "Normal", "Created", f"RayService {name} created in {cluster}")
            elif pool.rayservice is not None:
                await member.client.delete(RAYSERVICE, namespace, name)
                member.informer.forget(namespace, name)
                observed[cluster] = dataclasses.replace(pool, rayservice=None)
                post_event(md, "Normal", "Deleted", f"RayService {name} deleted from {cluster}")
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
    _transition_events(raw, previous, status)


def _transition_events(
    raw: Mapping[str, Any], previous: ModelDeploymentStatus | None, status: ModelDeploymentStatus
) -> None:
    old = previous.conditions if previous else None
    moved_from = previous.cluster_names if previous else None
    if moved_from and status.cluster_names and moved_from != status.cluster_names:
        placed = find(status.conditions, PLACED)
        reason = placed.reason if placed is not None else "Moved"
        kind = "Warning" if reason == REASON_FAILOVER else "Normal"
        post_event(raw, kind, reason, f"pools moved from {moved_from} to {status.cluster_names}")
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
        post_event(raw, kind, now.reason, f"{type_}={now.status}: {now.message}".rstrip(": "))


async def cleanup(rt: Runtime, body: Mapping[str, Any], idx: Indexes) -> None:
    """Delete the children in every member cluster; keep the finalizer until all are gone."""
    namespace, name = key = _key(body)
    async with rt.lock(key):
        with reconcile_scope("ModelDeployment", namespace, name) as scope:
            scope.outcome = "cleanup"
            waiting: list[str] = []
            for cc in idx.compute_clusters():
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
            rt.forget(key)


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
