"""Validating datasets (a FineTuneJob's, an Evaluation's) in a member cluster: the I/O of it.

One call per reconcile, level-triggered: create the validation Job when there is none (or
replace one left by an earlier job of the same name), else read it and its pods through the
member cluster's client and turn them into a `ClusterValidation`
(`reconcile.finetunejob_validation`). A Job is deleted once its report is read, or once a
failed one has been shown for `RETRY_AFTER_S` (the next reconcile starts a new one).
Unreachable clusters and API errors become a message; nothing here raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_kube import JOB, POD, ApiError, KubeClient, Unreachable
from tramontane_operator.builders.labels import OWNER_UID_LABEL, Owner
from tramontane_operator.builders.validation_job import (
    JOB_NAME_LABELS,
    build_validation_job,
    validation_job_name,
)
from tramontane_operator.placement import ClusterView
from tramontane_operator.reconcile.finetunejob_validation import (
    ClusterValidation,
    read_validation_job,
)

from .runtime import Runtime

log = logging.getLogger(__name__)


async def validate_in_cluster(
    rt: Runtime,
    job: FineTuneJob,
    cluster: ClusterView,
    tenant: str | None,
    now: datetime,
) -> ClusterValidation:
    """Advance the validation of `job`'s datasets in `cluster` by one step."""
    return await run_dataset_job(
        rt,
        job,
        validation_job_name(job),
        lambda: build_validation_job(job, cluster, rt.build, tenant),
        cluster,
        now,
    )


async def run_dataset_job(
    rt: Runtime,
    owner: Owner,
    name: str,
    build: Callable[[], dict[str, Any]],
    cluster: ClusterView,
    now: datetime,
) -> ClusterValidation:
    """Advance `owner`'s validation Job `name` (rendered by `build`) in `cluster` by one step:
    create it, or read its report (then delete it)."""
    namespace = owner.metadata.namespace or "default"
    where = f"in {cluster.name} (Job {name})"
    member = rt.clusters.get(cluster.name)
    if member is None or not member.probe.reachable:
        return ClusterValidation(message=f"waiting for {cluster.name} (unreachable) to validate")
    client = member.client
    try:
        current = await client.get(JOB, namespace, name)
        if current is not None and not _owned(current, owner):
            await client.delete(JOB, namespace, name)
            return ClusterValidation(message=f"replacing a stale validation Job {where}")
        if current is None:
            desired = build()
            await member.ensure_namespace(namespace)
            await client.apply(JOB, desired, None)
            return ClusterValidation(message=f"validating the datasets {where}: Job created")
        outcome = read_validation_job(current, await job_pods(client, namespace, name), where)
        if outcome.report is not None or outcome.retry_due(now):
            await client.delete(JOB, namespace, name)
        return outcome
    except Unreachable as exc:
        rt.clusters.report_unreachable(member.name, exc.cause)
        return ClusterValidation(message=f"waiting for {cluster.name} (unreachable) to validate")
    except ApiError as exc:
        log.warning("validation Job %s/%s: %s", namespace, name, exc)
        return ClusterValidation(message=f"validation {where}: {str(exc)[:400]}")


async def delete_validation_job(rt: Runtime, job: FineTuneJob, cluster: str) -> None:
    """Delete the job's validation Job in `cluster`, if any (cancel); errors are left to TTL."""
    await delete_dataset_job(rt, job, validation_job_name(job), cluster)


async def delete_dataset_job(rt: Runtime, owner: Owner, name: str, cluster: str) -> None:
    """Delete `owner`'s validation Job `name` in `cluster`, if any; errors are left to TTL."""
    member = rt.clusters.get(cluster)
    if member is None or not member.probe.reachable:
        return
    namespace = owner.metadata.namespace or "default"
    try:
        current = await member.client.get(JOB, namespace, name)
        if current is not None and _owned(current, owner):
            await member.client.delete(JOB, namespace, name)
    except (ApiError, Unreachable) as exc:
        log.info("validation Job %s/%s left to its TTL: %s", namespace, name, exc)


async def job_pods(client: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Job's pods, newest first (by either of the Job controller's labels)."""
    for label in JOB_NAME_LABELS:
        pods, _ = await client.list(POD, namespace, labels={label: name})
        if pods:
            return sorted(pods, key=_created, reverse=True)
    return []


def _created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def _owned(obj: Mapping[str, Any], owner: Owner) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return owner.metadata.uid is None or labels.get(OWNER_UID_LABEL) == owner.metadata.uid
