"""Where a FineTuneJob's training progress is read from: pure decisions, no I/O.

The trainer (rank 0) writes `progress.json` under the output URI and prints the same progress
as one `TRAMONTANE_PROGRESS {...}` line on stdout (`contract.train_config.progress_line`).
With `submissionMode: K8sJobMode`, KubeRay v1.7 runs the job from a submitter `batch/v1` Job
named like the RayJob, in its namespace (`createNewK8sJob`), whose pod runs `ray job submit
--no-wait` then `ray job logs --follow`: the driver's output, Ray Train workers' forwarded
lines included, is that pod's log. The Job controller labels the pod with the Job's name
(`batch.kubernetes.io/job-name`, and `job-name`); a retried submitter leaves older pods, so
the newest one is read.

The operator reads `progress.json` itself only in local mode, from a local output directory
(`finetunejob_trust.reads_output`: it reads no tenant data under its own identity, neither on a
`pvc://` claim it does not mount nor in an object store); otherwise it reads the bounded tail
of the submitter pod's log, only while it follows a RayJob whose job was submitted (terminal
jobs are not followed any more).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tramontane_workers.contract.train_config import TrainProgress

from .finetunejob_inputs import (
    DEPLOYMENT_COMPLETE,
    DEPLOYMENT_FAILED,
    DEPLOYMENT_RUNNING,
    RayJobState,
)

LOG_TAIL_LINES: Final = 200
LOG_LIMIT_BYTES: Final = 64 * 1024
# jobDeploymentStatus values under which the submitter pod exists and has run `ray job submit`.
_SUBMITTED: Final = frozenset({DEPLOYMENT_RUNNING, DEPLOYMENT_COMPLETE, DEPLOYMENT_FAILED})


def reads_submitter_log(
    rayjob: Mapping[str, Any] | None, from_output: TrainProgress | None
) -> bool:
    """Whether to read the submitter pod's log: a RayJob whose job was submitted is observed
    and the output URI gave no progress (not read by the operator, or nothing written yet)."""
    if rayjob is None or from_output is not None:
        return False
    return RayJobState.of(rayjob).deployment_status in _SUBMITTED


def submitter_job_name(rayjob_name: str) -> str:
    """The name of KubeRay's submitter Job of a RayJob (K8sJobMode): the RayJob's own."""
    return rayjob_name
