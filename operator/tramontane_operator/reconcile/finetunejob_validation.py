"""Where a FineTuneJob's datasets are validated, and how a validation Job's outcome reads.

Pure. The operator reads no tenant data under its own identity (`finetunejob_trust`): a job
whose datasets are not all local files (local mode only) — `pvc://` claims, which only member
clusters mount, and object stores (`s3://`, `gs://`, `az://`, `hf://`...), which the tenant's
identity reaches — is validated by a `batch/v1` Job in the cluster it is placed in, in its
namespace (`needs_cluster_validation`). `read_validation_job` turns the observed
Job and its pods into a `ClusterValidation`: the workers' `DatasetsReport` from a container's
termination message once there is one (a report of an unreadable file counts as a failure:
the file may appear later); else, while the Job runs, what its pod waits for (an
unschedulable pod names the missing claim, a pull error the image); else why it failed
(deadline, crash with exit code) — never an exception. A failed Job is retried after
`RETRY_AFTER_S`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_workers.contract.datasets_report import DatasetsReport

from .finetunejob_trust import needs_cluster_validation

PVC_PREFIX: Final = "pvc://"
# A failed validation Job is kept this long (it shows what went wrong) before another is tried.
RETRY_AFTER_S: Final = 60.0
_DETAIL_CHARS: Final = 400

__all__ = [
    "PVC_PREFIX",
    "RETRY_AFTER_S",
    "ClusterValidation",
    "needs_cluster_validation",
    "pod_detail",
    "read_validation_job",
    "uses_claims",
]


def uses_claims(job: FineTuneJob) -> bool:
    """Whether `job` reads or writes a claim (datasets, output, base model URI): its cluster
    is then kept when its RayJob is replaced (claims, and checkpoints on them, stay there)."""
    spec = job.spec
    uris = [f.uri for f in spec.training_files] + [f.uri for f in spec.validation_files or []]
    uris += [spec.output.uri, spec.base_model.uri or ""]
    return any(u.startswith(PVC_PREFIX) for u in uris)


@dataclass(frozen=True)
class ClusterValidation:
    """What the validation Job says: a report, or (running or failed) a message in words."""

    report: DatasetsReport | None = None
    message: str = ""
    failed: bool = False
    finished_at: datetime | None = None

    def retry_due(self, now: datetime) -> bool:
        """Whether a failed Job has been shown long enough to be replaced by a new one."""
        if not self.failed:
            return False
        return self.finished_at is None or (now - self.finished_at).total_seconds() >= (
            RETRY_AFTER_S
        )


def _terminated(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return [
        s["state"]["terminated"]
        for s in statuses
        if isinstance(s, Mapping) and isinstance((s.get("state") or {}).get("terminated"), Mapping)
    ]


def _report(pods: Sequence[Mapping[str, Any]]) -> tuple[DatasetsReport, datetime | None] | None:
    """The first report found in a termination message, and when its container finished."""
    for pod in pods:
        for terminated in _terminated(pod):
            message = terminated.get("message")
            if not message:
                continue
            try:
                report = DatasetsReport.model_validate_json(str(message))
            except ValidationError:
                continue
            return report, _time(terminated.get("finishedAt"))
    return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def pod_detail(pod: Mapping[str, Any]) -> str:
    """Why a validation pod is not done, in words ("" when it simply runs)."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            why = cond.get("message") or cond.get("reason") or "not scheduled"
            return _short(f"pod {status.get('phase') or 'Pending'}: {why}")
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        waiting = state.get("waiting")
        if isinstance(waiting, Mapping) and waiting.get("reason") not in (
            None,
            "ContainerCreating",
        ):
            return _short(f"container {waiting.get('reason')}: {waiting.get('message') or ''}")
        terminated = state.get("terminated")
        if isinstance(terminated, Mapping):
            code = terminated.get("exitCode")
            why = terminated.get("reason") or "terminated"
            tail = terminated.get("message") or ""
            return _short(f"container {why} (exit code {code}) {tail}".strip())
    return ""


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The Job's condition `type_` when it is True (Complete or Failed)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def read_validation_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], where: str
) -> ClusterValidation:
    """The outcome of the validation Job `job` (named in messages as `where`) and its pods."""
    found = _report(pods)
    if found is not None:
        report, finished_at = found
        if report.unreadable is not None:  # the file may appear: tried again after a while
            return ClusterValidation(
                message=f"cannot read: {report.unreadable}", failed=True, finished_at=finished_at
            )
        return ClusterValidation(report=report)
    details = [d for d in (pod_detail(p) for p in pods) if d]
    detail = f": {details[0]}" if details else ""
    failure = _condition(job, "Failed")
    if failure is not None:
        why = failure.get("reason") or "Failed"
        message = failure.get("message") or ""
        text = f"validation {where} failed ({why}{': ' + message if message else ''}){detail}"
        return ClusterValidation(
            message=_short(text) + " (no report)",
            failed=True,
            finished_at=_time(failure.get("lastTransitionTime")),
        )
    complete = _condition(job, "Complete")
    if complete is not None:
        return ClusterValidation(
            message=f"validation {where} completed without a report{detail}",
            failed=True,
            finished_at=_time(complete.get("lastTransitionTime")),
        )
    return ClusterValidation(message=f"validating the datasets {where}{detail}")
