"""The operator's control loop: the controllers of every kind, the ledger's rebuild, the sweep.

`Manager.run()` is what the elected leader runs (controller-runtime's Manager): the hub caches
already run on every replica (`Runtime.start`: a standby's are warm, and the admission
webhook reads them); the leader connects every member cluster, rebuilds the one GPU ledger
from what is durable (`durable_state` -> `quotas.ledger.rebuild`), queues every object it
caches, then lets the controllers of the five kinds work, and sweeps orphans at start and
every `sweep_interval_s`.

The sweep deletes, in every reachable member, the children (RayServices, RayJobs, validation
Jobs, all labelled with their owner) whose owner no longer exists in the hub, or exists with
another uid (deleted and created again): owner references cannot cross clusters, so nothing
else would ever delete them. It runs only on synced caches, and never for owners in
namespaces this operator does not watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Final

from tramontane_api.v1alpha1 import Evaluation, FineTuneJob, ModelDeployment
from tramontane_kube import JOB, RAYSERVICE, ApiError, NotFound, ResourceRef, Unreachable
from tramontane_operator.builders.labels import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_KIND_LABEL,
    OWNER_NAME_LABEL,
    OWNER_NAMESPACE_LABEL,
    OWNER_UID_LABEL,
)
from tramontane_operator.kube import MemberCluster
from tramontane_operator.placement import pool_gpus
from tramontane_operator.quotas import Workload
from tramontane_operator.quotas.ledger import GpusPerCluster, merge_clusters, rebuild
from tramontane_operator.reconcile.admission import admitted_md_workload, created_at, job_workload
from tramontane_operator.reconcile.evaluation import finished as eval_finished
from tramontane_operator.reconcile.evaluation import holds_quota as eval_holds_quota
from tramontane_operator.reconcile.evaluation_inputs import eval_workload
from tramontane_operator.reconcile.finetunejob import finished

from .computecluster import ComputeClusters
from .controller import Controller
from .evaluation import Evaluations
from .finetunejob import FineTuneJobs
from .finetunejob_children import RAYJOB
from .indexes import Cache
from .modeldeployment import SYNC_WAIT_S, ModelDeployments
from .runtime import EVALUATIONS, FINETUNEJOBS, MODELDEPLOYMENTS, Runtime
from .tenant import Tenants

log = logging.getLogger(__name__)

MANAGED: Final = {MANAGED_BY_LABEL: MANAGED_BY}
CHILD_KINDS: Final[tuple[ResourceRef, ...]] = (RAYSERVICE, RAYJOB, JOB)


class Manager:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        kinds = (
            ComputeClusters(rt),
            Tenants(rt),
            ModelDeployments(rt),
            FineTuneJobs(rt),
            Evaluations(rt),
        )
        self.controllers: list[Controller] = [kind.controller for kind in kinds]

    async def run(self) -> None:
        """Start everything, then sweep periodically until cancelled (then stop it all)."""
        rt = self.rt
        for controller in self.controllers:
            controller.start()
        try:
            await rt.indexes.synced()
            for controller in self.controllers:  # what the caches listed before we led
                controller.enqueue_all()
            await connect_members(rt)
            rt.ledger = rebuild(*await durable_state(rt))
            log.info("GPU ledger rebuilt: %d workloads hold GPUs or quota", len(rt.ledger))
            rt.set_ready()
            while True:
                await sweep(rt)
                await asyncio.sleep(rt.settings.sweep_interval_s)
        finally:
            for controller in self.controllers:
                await controller.stop()


async def connect_members(rt: Runtime) -> None:
    """Connect and probe every member (in parallel), and wait a little for their caches."""
    members = await asyncio.gather(*(rt.ensure_member(cc) for cc in rt.indexes.compute_clusters()))
    up = [m for m in members if m is not None and m.usable]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(m.informer.synced.wait() for m in up)), SYNC_WAIT_S)


async def children(member: MemberCluster, ref: ResourceRef) -> list[dict[str, Any]]:
    """Our children of one kind in a member (the RayService cache, else a labelled list)."""
    if ref is RAYSERVICE and member.informer.synced.is_set():
        return [dict(o) for o in member.informer.items.values()]
    items, _ = await member.client.list(ref, None, MANAGED)
    return items


def _owner(obj: Mapping[str, Any]) -> tuple[str, str, str, str | None] | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    kind, namespace = labels.get(OWNER_KIND_LABEL), labels.get(OWNER_NAMESPACE_LABEL)
    name = labels.get(OWNER_NAME_LABEL)
    if not (kind and namespace and name):
        return None
    return kind, namespace, name, labels.get(OWNER_UID_LABEL)


async def durable_state(
    rt: Runtime,
) -> tuple[list[Any], dict[str, GpusPerCluster]]:
    """Every workload as its status says, and the GPUs its children take in the members."""
    idx = rt.indexes
    mds = {(m.metadata.namespace or "", m.metadata.name): m for m in idx.deployments()}
    jobs = {(j.metadata.namespace or "", j.metadata.name): j for j in idx.jobs()}
    evals = {(e.metadata.namespace or "", e.metadata.name): e for e in idx.evaluations.parsed()}
    found: dict[str, GpusPerCluster] = {}
    for member in list(rt.clusters.members.values()):
        if not member.usable:
            continue  # its pools are known from the statuses that place them there
        for ref in (RAYSERVICE, RAYJOB):
            try:
                items = await children(member, ref)
            except (ApiError, Unreachable) as exc:
                log.warning("cluster %s: %s not listed for the ledger: %s", member.name, ref, exc)
                continue
            for obj in items:
                gpus = _child_gpus(obj, member.name, mds, jobs, evals)
                if gpus is not None:
                    key, held = gpus
                    found[key] = merge_clusters(found.get(key, {}), held)
    workloads = [admitted_md_workload(m) for m in mds.values()]
    workloads += [job_workload(j) for j in jobs.values()]
    workloads += [_eval_workload(e, mds) for e in evals.values()]
    return workloads, found


def _eval_workload(
    ev: Evaluation, mds: Mapping[tuple[str, str], ModelDeployment], cluster: str | None = None
) -> Workload:
    """The Evaluation as its status says it holds (or `cluster`, where a RayJob of it runs)."""
    namespace = ev.metadata.namespace or ""
    md = mds.get((namespace, ev.spec.target.model_deployment_ref.name))
    admitted = cluster is not None or eval_holds_quota(ev.status)
    where = cluster or (ev.status.cluster if ev.status else None)
    return eval_workload(ev, md, created_at(ev), admitted, where)


def _child_gpus(
    obj: Mapping[str, Any],
    cluster: str,
    mds: Mapping[tuple[str, str], ModelDeployment],
    jobs: Mapping[tuple[str, str], FineTuneJob],
    evals: Mapping[tuple[str, str], Evaluation],
) -> tuple[str, GpusPerCluster] | None:
    owner = _owner(obj)
    if owner is None:
        return None
    kind, namespace, name, _ = owner
    spec = obj.get("spec") or {}
    if kind == MODELDEPLOYMENTS and (md := mds.get((namespace, name))) is not None:
        groups = (spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or []
        replicas = sum(int(g.get("replicas") or 0) for g in groups)
        return f"{kind}/{namespace}/{name}", pool_gpus(md, {cluster: replicas})
    if kind == FINETUNEJOBS and (job := jobs.get((namespace, name))) is not None:
        if finished(job) or spec.get("suspend"):
            return None  # its Ray cluster is gone or going: it holds nothing
        workload = job_workload(job, cluster)
        return workload.key, {cluster: dict(workload.gpus)}
    if kind == EVALUATIONS and (ev := evals.get((namespace, name))) is not None:
        if eval_finished(ev) or (obj.get("status") or {}).get("jobDeploymentStatus") in (
            "Complete",
            "Failed",
        ):
            return None  # its run is over: its Ray cluster is gone or going
        workload = _eval_workload(ev, mds, cluster)
        return workload.key, {cluster: dict(workload.gpus)}
    return None


async def sweep(rt: Runtime) -> int:
    """Delete our children whose owner is gone, in every usable member; how many."""
    idx = rt.indexes
    owners: dict[str, Cache[Any]] = {
        MODELDEPLOYMENTS: idx.modeldeployments,
        FINETUNEJOBS: idx.finetunejobs,
        EVALUATIONS: idx.evaluations,
    }
    watched = None if rt.settings.all_namespaces else set(rt.settings.namespaces)
    deleted = 0
    for member in list(rt.clusters.members.values()):
        if not member.usable:
            continue
        for ref in CHILD_KINDS:
            try:
                items = await children(member, ref)
            except (ApiError, Unreachable) as exc:
                log.info("cluster %s: %s not swept: %s", member.name, ref.plural, exc)
                continue
            for obj in items:
                owner = _owner(obj)
                if owner is None or owner[0] not in owners:
                    continue
                kind, namespace, name, uid = owner
                if watched is not None and namespace not in watched:
                    continue
                alive = owners[kind].raw((namespace, name))
                alive_uid = ((alive or {}).get("metadata") or {}).get("uid")
                if alive is not None and (uid is None or uid == alive_uid):
                    continue
                deleted += await _delete_orphan(member, ref, obj, f"{kind} {namespace}/{name}")
    return deleted


async def _delete_orphan(
    member: MemberCluster, ref: ResourceRef, obj: Mapping[str, Any], owner: str
) -> int:
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta["name"])
    try:
        await member.client.delete(ref, namespace, name)
    except NotFound:
        return 0
    except (ApiError, Unreachable) as exc:
        log.info("cluster %s: orphan %s %s/%s not deleted: %s", member.name, ref.kind,
                 namespace, name, exc)  # fmt: skip
        return 0
    if ref is RAYSERVICE:
        member.informer.forget(namespace, name)
    log.warning("cluster %s: deleted orphan %s %s/%s (%s is gone)", member.name, ref.kind,
                namespace, name, owner)  # fmt: skip
    return 1
