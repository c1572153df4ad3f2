"""What the FineTuneJob phase machine is given: validation, admission, placement, RayJob.

Pure values the runtime gathers (or keeps from the status it wrote before) plus the two
small decisions that need no I/O: which cluster a job runs in (`place_job`) and how KubeRay's
RayJob status reads (`RayJobState.of`). KubeRay v1.7 reports `jobDeploymentStatus` (the
RayJob controller's state: "", New, Initializing, Running, Complete, Failed, Suspending,
Suspended, Retrying, Waiting, ValidationFailed) and `jobStatus` (Ray's own: PENDING, RUNNING,
STOPPED, SUCCEEDED, FAILED), with `reason` (e.g. DeadlineExceeded, AppFailed) and `failed`
(attempts that failed so far).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_api.v1alpha1.common import LabelSelector
from tramontane_api.v1alpha1.finetunejob import Estimate
from tramontane_operator.placement import ClusterView
from tramontane_operator.placement.eligibility import selector_matches

# jobDeploymentStatus values (KubeRay ray.io/v1 RayJob).
DEPLOYMENT_RUNNING: Final = "Running"
DEPLOYMENT_COMPLETE: Final = "Complete"
DEPLOYMENT_FAILED: Final = "Failed"
DEPLOYMENT_SUSPENDING: Final = "Suspending"
DEPLOYMENT_SUSPENDED: Final = "Suspended"
DEPLOYMENT_RETRYING: Final = "Retrying"
DEPLOYMENT_VALIDATION_FAILED: Final = "ValidationFailed"
# jobStatus values (Ray's job submission API).
JOB_SUCCEEDED: Final = "SUCCEEDED"
JOB_FAILED: Final = "FAILED"
JOB_STOPPED: Final = "STOPPED"
# RayJob status.reason when activeDeadlineSeconds passed.
REASON_DEADLINE_EXCEEDED: Final = "DeadlineExceeded"


@dataclass(frozen=True)
class ValidationResult:
    """The datasets' validation: `errors` are the first bad lines as "uri:LINE: message".
    `reason` is the conditions' reason when not ok (None: `InvalidDataset`)."""

    ok: bool
    errors: tuple[str, ...] = ()
    bad_lines: int = 0
    lines: int = 0
    estimate: Estimate | None = None
    truncated: int = 0  # training conversations longer than the job's sequence length
    sequence_length: int | None = None
    reason: str | None = None

    def message(self, limit: int = 5) -> str:
        if self.ok:
            cut = (
                f"; {self.truncated} conversation(s) longer than sequenceLength "
                f"{self.sequence_length} tokens will be cut"
                if self.truncated
                else ""
            )
            assumptions = self.estimate.assumptions if self.estimate else None
            assumed = "".join(f"; estimate: {a}" for a in assumptions or ())
            return f"{self.lines} lines valid{cut}{assumed}"
        shown = "; ".join(self.errors[:limit])
        if not self.bad_lines:
            return shown
        more = self.bad_lines - min(len(self.errors), limit)
        return f"{self.bad_lines} bad lines: {shown}" + (f" (and {more} more)" if more else "")


@dataclass(frozen=True)
class AdmissionResult:
    """The tenant's quota decision for the job (admitted, or queued at a position)."""

    admitted: bool
    queue_position: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class JobPlacement:
    """The cluster the job runs in, or None with the reason in words."""

    cluster: str | None
    message: str


@dataclass(frozen=True)
class RayJobState:
    """What the operator reads of an observed RayJob."""

    deployment_status: str
    job_status: str
    reason: str
    message: str
    failed_attempts: int
    suspend: bool

    @classmethod
    def of(cls, rayjob: Mapping[str, Any]) -> RayJobState:
        status = rayjob.get("status") or {}
        return cls(
            deployment_status=str(status.get("jobDeploymentStatus") or ""),
            job_status=str(status.get("jobStatus") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            failed_attempts=int(status.get("failed") or 0),
            suspend=bool((rayjob.get("spec") or {}).get("suspend")),
        )

    @property
    def succeeded(self) -> bool:
        return self.deployment_status == DEPLOYMENT_COMPLETE and self.job_status == JOB_SUCCEEDED

    @property
    def failed(self) -> bool:
        if self.deployment_status in (DEPLOYMENT_FAILED, DEPLOYMENT_VALIDATION_FAILED):
            return True
        return self.deployment_status == DEPLOYMENT_COMPLETE and not self.succeeded

    @property
    def suspended(self) -> bool:
        return self.deployment_status in (DEPLOYMENT_SUSPENDING, DEPLOYMENT_SUSPENDED)


def _needs(job: FineTuneJob) -> tuple[str | None, int]:
    res = job.spec.resources
    total = res.workers * res.gpus_per_worker
    return (res.gpu_type, total) if res.gpu_type and total else (None, 0)


def _why_not(gpu_type: str | None, gpus: int, cluster: ClusterView) -> str | None:
    if not cluster.reachable:
        return "unreachable"
    if not cluster.kuberay_installed:
        return "KubeRay not installed"
    if cluster.cordoned:
        return "cordoned"
    if gpu_type is not None and cluster.free_gpus(gpu_type) < gpus:
        return f"{cluster.free_gpus(gpu_type)} free {gpu_type} of {gpus} needed"
    return None


def place_job(
    job: FineTuneJob, clusters: Sequence[ClusterView], current: str | None = None
) -> JobPlacement:
    """Where the job runs: its current cluster while that is reachable (a job never moves
    mid-run), else the first eligible candidate — named clusters in the order given, else
    those the selector matches (all when unset) with the most free GPUs of the type first."""
    placement = job.spec.placement
    gpu_type, gpus = _needs(job)
    names = placement.clusters if placement is not None else None
    selector = placement.cluster_selector if placement is not None else None
    return place_batch(gpu_type, gpus, names, selector, clusters, current)


def place_batch(
    gpu_type: str | None,
    gpus: int,
    names: Sequence[str] | None,
    selector: LabelSelector | None,
    clusters: Sequence[ClusterView],
    current: str | None = None,
) -> JobPlacement:
    """Where a batch workload (a FineTuneJob, an Evaluation) needing `gpus` of `gpu_type` runs:
    `current` while reachable, else the first eligible of the clusters `names` (in that
    order), else of those `selector` matches (all when unset), most free GPUs first."""
    by_name = {c.name: c for c in clusters}
    if current is not None:
        now = by_name.get(current)
        if now is not None and now.reachable:
            return JobPlacement(current, f"running in {current}")
    if names is not None:
        chosen = [by_name[n] for n in names if n in by_name]
    else:
        chosen = sorted(
            (
                c
                for c in clusters
                if selector is None or selector_matches(selector, c.selector_labels)
            ),
            key=lambda c: (-c.free_gpus(gpu_type) if gpu_type else 0, c.name),
        )
    if not chosen:
        return JobPlacement(None, "no ComputeCluster matches spec.placement")
    reasons = []
    for cluster in chosen:
        why = _why_not(gpu_type, gpus, cluster)
        if why is None:
            return JobPlacement(cluster.name, f"placed in {cluster.name}")
        reasons.append(f"{cluster.name}: {why}")
    return JobPlacement(None, "no eligible cluster (" + "; ".join(reasons) + ")")
