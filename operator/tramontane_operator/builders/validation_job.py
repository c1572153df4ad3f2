"""Build the `batch/v1` Job that validates a FineTuneJob's datasets in its member cluster.

The operator reads no tenant data under its own identity (docs/trust-model.md), so a job whose
datasets are not local files (local mode) has them validated by a small CPU Job in the member
cluster it is placed in, in the job's namespace, under that namespace's (the tenant's) service
account and cloud identity, as its training pods are: one pod of the worker image, `pvc://`
claims mounted read-only (object-store URIs need no mount: the image has fsspec's backends),
running the workers' own validation (`python -m tramontane_workers.contract.datasets_report`),
which writes its compact JSON report to `/dev/termination-log` (`terminationMessagePolicy:
File`). The operator reads it from the pod's
`status.containerStatuses[].state.terminated.message`. Bounded: no retries (`backoffLimit: 0`;
the operator decides), a deadline (`activeDeadlineSeconds`), at most `MAX_FILE_BYTES` read per
file, and a TTL so a Job the operator never deleted does not linger. The pod needs no
Kubernetes API token (none is mounted). Labels as every child, plus the role label; the pod
runs under the restricted pod security profile (`security`). Like every Ray pod it gets the
workers' service account, pod labels and environment (`BuildSettings.worker_*`: on AKS the
Workload Identity the training pods read the same datasets with, and the storage account).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_operator.placement import ClusterView
from tramontane_workers.contract.datasets_report import DEFAULT_MAX_FILE_BYTES

from .labels import Owner, child_labels
from .rayjob import dataset_uses
from .rayservice import BuildSettings, child_metadata, pod_template
from .security import restricted_pod_spec
from .volumes import ClaimUse, pod_volumes, with_volumes

REPORT_MODULE: Final = "tramontane_workers.contract.datasets_report"
TERMINATION_LOG: Final = "/dev/termination-log"
ROLE_LABEL: Final = "tramontane.dev/role"
ROLE: Final = "dataset-validation"
# Labels the Job controller puts on its pods (the second since Kubernetes 1.27).
JOB_NAME_LABELS: Final = ("batch.kubernetes.io/job-name", "job-name")
DEADLINE_S: Final = 1800
MAX_FILE_BYTES: Final = DEFAULT_MAX_FILE_BYTES
TTL_AFTER_FINISHED_S: Final = 600
CPU: Final = "1"
MEMORY: Final = "2Gi"
_SUFFIX: Final = "-validate"
_MAX_NAME: Final = 63  # Job names become the `job-name` label value of their pods


def suffixed_name(name: str, suffix: str, limit: int = _MAX_NAME) -> str:
    """`<name><suffix>`, shortened with a digest of `name` when longer than `limit`."""
    if len(name) + len(suffix) <= limit:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    stem = name[: limit - len(suffix) - len(digest) - 1].rstrip("-.")
    return f"{stem}-{digest}{suffix}"


def validation_job_name(job: FineTuneJob) -> str:
    """`<job>-validate`, shortened with a digest when the job's name is long."""
    return suffixed_name(job.metadata.name, _SUFFIX)


def validation_command(job: FineTuneJob) -> list[str]:
    spec = job.spec
    command = ["python", "-m", REPORT_MODULE, "--training", *(f.uri for f in spec.training_files)]
    if spec.validation_files:
        command += ["--validation", *(f.uri for f in spec.validation_files)]
    seq_len = str(spec.hyperparameters.sequence_length)
    bound = ["--max-file-bytes", str(MAX_FILE_BYTES)]
    return [*command, "--max-seq-len", seq_len, *bound, "--output", TERMINATION_LOG]


def build_validation_job(
    job: FineTuneJob, cluster: ClusterView, settings: BuildSettings, tenant: str | None
) -> dict[str, Any]:
    """The validation Job of `job` in `cluster`. ValueError names a bad claim's field."""
    return build_dataset_job(
        job,
        validation_job_name(job),
        validation_command(job),
        dataset_uses(job),
        cluster,
        settings,
        tenant,
    )


def build_dataset_job(
    owner: Owner,
    name: str,
    command: list[str],
    uses: list[ClaimUse],
    cluster: ClusterView,
    settings: BuildSettings,
    tenant: str | None,
) -> dict[str, Any]:
    """A validation Job `name` of `owner`'s datasets (`uses`, mounted read-only) running
    `command` in `cluster`. ValueError names a bad claim's field."""
    labels = {**child_labels(owner, cluster.name, tenant), ROLE_LABEL: ROLE}
    metadata = {**child_metadata(owner, cluster, settings, labels), "name": name}
    resources = {"cpu": CPU, "memory": MEMORY}
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # it reads datasets, never the Kubernetes API
        "containers": [
            {
                "name": "validate",
                "image": settings.worker_image,
                "command": command,
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "File",
            }
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE_S,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": pod_template(
                restricted_pod_spec(with_volumes(pod_spec, pod_volumes(uses))), labels, settings
            ),
        },
    }
