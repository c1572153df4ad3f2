"""The FineTuneJob handlers' I/O on their children and inputs.

Reading the job's RayJob in its member cluster (an unreachable cluster where the job runs is
a reason to wait) and the trainer's progress (`progress.json` of a local output in local
mode, else the tail of the RayJob's submitter pod's log: `reconcile.finetunejob_progress`,
`reconcile.finetunejob_trust`), carrying
out the phase machine's actions on it (create, suspend, resume, patch the job controls,
replace, delete), the base model's ModelDeployment, auto-deploying the adapter into the
target ModelDeployment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment, Tenant
from tramontane_kube import (
    EVALUATION,
    MODELDEPLOYMENT,
    ApiError,
    Conflict,
    ResourceRef,
    Unreachable,
)
from tramontane_operator.builders.rayjob import build_rayjob, build_train_config
from tramontane_operator.placement import ClusterView
from tramontane_operator.reconcile.finetunejob import Decision, adapter_uri
from tramontane_operator.reconcile.finetunejob_deploy import (
    DEPLOY_FAILED,
    DeployOutcome,
    gate_evaluation,
    gate_name,
)
from tramontane_operator.reconcile.finetunejob_deploy import adapters_with as deploy_adapters
from tramontane_operator.reconcile.finetunejob_progress import (
    LOG_LIMIT_BYTES,
    LOG_TAIL_LINES,
    reads_submitter_log,
    submitter_job_name,
)
from tramontane_operator.reconcile.finetunejob_trust import reads_output
from tramontane_workers.contract.train_config import TrainProgress, last_progress

from . import finetunejob_io as io
from .controller import Invalid, Retry
from .finetunejob_validation import job_pods
from .runtime import Runtime

log = logging.getLogger(__name__)

RAYJOB: Final = ResourceRef("ray.io", "v1", "rayjobs", "RayJob")


async def base_model(rt: Runtime, job: FineTuneJob) -> tuple[str | None, str | None]:
    """(URI, served name) of the base model; (None, error) when its ModelDeployment is gone."""
    base = job.spec.base_model
    if base.uri is not None:
        return base.uri, None
    ref = base.model_deployment_ref
    if ref is None:  # the CRD's CEL rule forbids this
        return None, "spec.baseModel: set modelDeploymentRef or uri"
    md = await model_deployment(rt, job.metadata.namespace or "default", ref.name)
    if md is None:
        return None, f"ModelDeployment {ref.name} not found"
    return md.spec.model.source, md.spec.model.name


async def model_deployment(rt: Runtime, namespace: str, name: str) -> ModelDeployment | None:
    try:
        raw = await rt.hub.get(MODELDEPLOYMENT, namespace, name)
    except (ApiError, Unreachable) as exc:
        raise Retry(f"reading ModelDeployment {name}: {exc}") from exc
    if raw is None:
        return None
    try:
        return ModelDeployment.model_validate(raw)
    except ValidationError:
        return None


async def read_rayjob(
    rt: Runtime, cluster: str | None, namespace: str, name: str, placed_before: bool
) -> dict[str, Any] | None:
    """The job's RayJob in `cluster`. Where the job already runs, an unreachable cluster is a
    reason to wait, never "no RayJob" (that would start a second run elsewhere)."""
    member = rt.clusters.get(cluster) if cluster else None
    if member is None or not member.probe.reachable:
        if placed_before:
            raise Retry(f"cluster {cluster} of the job unreachable", 1.0)
        return None
    try:
        return await member.client.get(RAYJOB, namespace, name)
    except Unreachable as exc:
        rt.clusters.report_unreachable(member.name, exc.cause)
        raise Retry(f"{member.name} unreachable: {exc.cause}", 1.0) from exc


async def read_progress(
    rt: Runtime,
    job: FineTuneJob,
    cluster: str | None,
    rayjob: Mapping[str, Any] | None,
    terminal: bool,
) -> TrainProgress | None:
    """The trainer's last progress: from `progress.json` under the output URI where the
    operator reads it (local mode), else from the submitter pod's log in `cluster`; None if
    neither."""
    uri = job.spec.output.uri
    progress = None
    if (rayjob is not None or terminal) and reads_output(uri, rt.settings.local_mode):
        progress = await asyncio.to_thread(io.read_progress, uri)
    if cluster and reads_submitter_log(rayjob, progress):
        namespace = job.metadata.namespace or "default"
        progress = await submitter_progress(rt, cluster, namespace, job.metadata.name)
    return progress


async def submitter_progress(
    rt: Runtime, cluster: str, namespace: str, rayjob_name: str
) -> TrainProgress | None:
    """The last progress line in the log of the RayJob's newest submitter pod; None when there
    is none or the log cannot be read (pod gone or not started, cluster unreachable)."""
    text = await submitter_log(rt, cluster, namespace, rayjob_name)
    return last_progress(text) if text else None


async def submitter_log(rt: Runtime, cluster: str, namespace: str, rayjob_name: str) -> str | None:
    """The bounded tail of the log of the RayJob's newest submitter pod; None when there is
    none or it cannot be read (pod gone or not started, cluster unreachable)."""
    member = rt.clusters.get(cluster)
    if member is None or not member.probe.reachable:
        return None
    client = member.client
    try:
        pods = await job_pods(client, namespace, submitter_job_name(rayjob_name))
        if not pods:
            return None
        pod = pods[0]["metadata"]["name"]
        return await client.pod_log(namespace, pod, LOG_TAIL_LINES, LOG_LIMIT_BYTES)
    except (ApiError, Unreachable) as exc:
        log.debug("submitter log of RayJob %s/%s unread: %s", namespace, rayjob_name, exc)
        return None


async def apply_actions(
    rt: Runtime,
    job: FineTuneJob,
    decision: Decision,
    observed_in: str | None,
    views: Mapping[str, ClusterView],
    tenant: Tenant | None,
    base_uri: str | None,
    base_name: str | None,
) -> DeployOutcome | None:
    """Carry out the decision's actions; the auto-deploy outcome when one was attempted.

    The RayJob is created in the cluster the decision places the job in, and suspended,
    resumed, patched or deleted in `observed_in`, where it was read."""
    namespace, name = job.metadata.namespace or "default", job.metadata.name
    target = decision.status.cluster
    outcome = None
    for action in decision.actions:
        cluster = target if action == "create_rayjob" else observed_in
        member = rt.clusters.get(cluster) if cluster else None
        client = member.client if member is not None else None
        try:
            if action == "create_rayjob" and client is not None and cluster and base_uri:
                config = build_train_config(job, base_uri, base_name)
                tenant_name = tenant.metadata.name if tenant else None
                desired = build_rayjob(job, config, views[cluster], rt.build, tenant_name)
                if member is not None:
                    await member.ensure_namespace(namespace)
                await client.apply(RAYJOB, desired, None)
                rt.events.post(job, "Normal", "Created", f"RayJob {name} created in {cluster}")
            elif action in ("suspend_rayjob", "resume_rayjob") and client is not None:
                suspend = action == "suspend_rayjob"
                await client.patch(RAYJOB, namespace, name, {"spec": {"suspend": suspend}})
            elif action == "patch_rayjob_controls" and client is not None:
                spec = job.spec
                controls = {
                    "backoffLimit": spec.backoff_limit,
                    "activeDeadlineSeconds": spec.active_deadline_seconds,  # None removes it
                }
                await client.patch(RAYJOB, namespace, name, {"spec": controls})
            elif action == "replace_rayjob" and client is not None:
                await client.delete(RAYJOB, namespace, name)
                rt.events.post(
                    job, "Normal", "Replacing", f"RayJob {name} replaced: the spec changed"
                )
            elif action == "delete_rayjob" and client is not None:
                await client.delete(RAYJOB, namespace, name)
            elif action == "auto_deploy":
                outcome = await auto_deploy(rt, job, decision)
            elif action == "gate_evaluation":
                await create_gate(rt, job)
        except ValueError as exc:  # the spec cannot be trained as given
            rt.events.post(job, "Warning", "InvalidSpec", str(exc))
            raise Invalid(str(exc)) from exc
        except ApiError as exc:
            if exc.status == 422:  # what we render is refused: not until the spec changes
                rt.events.post(job, "Warning", "InvalidSpec", f"{action}: {exc}")
                raise Invalid(f"{action}: {exc}") from exc
            raise Retry(f"{action}: {exc}") from exc
        except Unreachable as exc:
            raise Retry(f"{action}: {exc}") from exc
    return outcome


async def create_gate(rt: Runtime, job: FineTuneJob) -> None:
    """Create the deployment gate's Evaluation of the job's adapter (once: an existing one is
    left as it is)."""
    deploy = job.spec.auto_deploy
    if deploy is None:
        raise ValueError("spec.autoDeploy is not set")
    namespace = job.metadata.namespace or "default"
    md = await model_deployment(rt, namespace, deploy.model_deployment_ref.name)
    try:
        await rt.hub.create(EVALUATION, gate_evaluation(job, md))
    except Conflict:
        return
    rt.events.post(job, "Normal", "Evaluating", f"Evaluation {gate_name(job)} created")


async def auto_deploy(rt: Runtime, job: FineTuneJob, decision: Decision) -> DeployOutcome:
    deploy = job.spec.auto_deploy
    if deploy is None:
        raise ValueError("spec.autoDeploy is not set")
    namespace = job.metadata.namespace or "default"
    md = await model_deployment(rt, namespace, deploy.model_deployment_ref.name)
    uri = decision.status.adapter.uri if decision.status.adapter else adapter_uri(job, None)
    adapters, outcome = deploy_adapters(job, md, uri)
    if adapters is not None and md is not None:
        patch = {"spec": {"adapters": adapters}}
        try:
            await rt.hub.patch(MODELDEPLOYMENT, namespace, md.metadata.name, patch)
        except ApiError as exc:
            return DeployOutcome(False, DEPLOY_FAILED, str(exc)[:512])
        rt.events.post(job, "Normal", "AdapterDeployed", outcome.message)
    return outcome
