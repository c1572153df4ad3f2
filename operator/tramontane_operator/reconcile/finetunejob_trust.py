"""Which of a FineTuneJob's URIs the operator may read itself: the trust model's decisions, pure.

The operator reads tenants' data under its own identity only in local mode
(`OperatorSettings.local_mode`: one machine, its own files), and then only `file://` URIs and
plain paths (`is_local`). Everywhere else (docs/trust-model.md):

- a `file://` URI or a plain path among the job's training and validation files, output or
  base model is refused at once (`local_path_refusal`: FailedValidation, reason
  `LocalPathRefused`, each field named) — the operator's filesystem holds its own credentials
  and what it mounts, never a tenant's data;
- other datasets (`pvc://`, `s3://`, `gs://`, `az://`, `hf://`...) are validated by a Job in the
  member cluster the job is placed in, in its namespace, under that namespace's identity
  (`needs_cluster_validation`, `builders.validation_job`);
- the trainer's `progress.json` under the output is read only where the operator may read it
  (`reads_output`), else from the RayJob submitter pod's log (`reconcile.finetunejob_progress`);
- the base model's `config.json` likewise (`reads_base_model`): else the estimate assumes a size
  and says why (`unread_model_size`).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlparse

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_operator.builders.rayjob import claim_uses, dataset_uses
from tramontane_workers.contract.estimate import ModelSizeRead

from .finetunejob_inputs import ValidationResult

LOCAL_PATH_REFUSED: Final = "LocalPathRefused"
# What to use instead, by field: the CRD allows hf:// for models, not for data.
DATA_HINT: Final = "use pvc://, s3://, gs:// or az://"
MODEL_HINT: Final = "use pvc://, s3://, gs://, az:// or hf://"
NOT_READ_BY_OPERATOR: Final = "not read by the operator (trust model)"


def is_local(uri: str) -> bool:
    """Whether `uri` names a file on the machine that reads it: `file://`, a plain path (a
    one-letter scheme is a Windows drive), as the workers' `open_uri` resolves them."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1


def local_path_refusal(
    job: FineTuneJob, base_model_uri: str | None, local_mode: bool
) -> ValidationResult | None:
    """Outside local mode, the refusal of a job naming local files (each field named); None
    when the job names none, or in local mode. `base_model_uri` is the base model as resolved
    (its ModelDeployment's source for a `modelDeploymentRef`), None while unknown."""
    if local_mode:
        return None
    base, *data = claim_uses(job, base_model_uri or "")  # the base model comes first
    hinted = [(use, DATA_HINT) for use in data]
    if base_model_uri is not None:  # else not known yet
        hinted.insert(0, (base, MODEL_HINT))
    errors = tuple(
        f"{use.field}: file:// URIs are read only in local mode (got {use.uri!r}); {hint}"
        for use, hint in hinted
        if is_local(use.uri)
    )
    if not errors:
        return None
    return ValidationResult(False, errors, reason=LOCAL_PATH_REFUSED)


def needs_cluster_validation(job: FineTuneJob) -> bool:
    """Whether `job`'s datasets are validated by a Job in its member cluster: whenever one is
    not a local file (a claim, an object store, the hub). Only local mode validates local files
    in the operator; outside it they were refused before (`local_path_refusal`)."""
    return any(not is_local(use.uri) for use in dataset_uses(job))


def reads_output(output_uri: str, local_mode: bool) -> bool:
    """Whether the operator reads the trainer's files under `output_uri` itself."""
    return local_mode and is_local(output_uri)


def reads_base_model(base_model_uri: str, local_mode: bool) -> bool:
    """Whether the operator reads the base model's `config.json` itself (for the estimate)."""
    return local_mode and is_local(base_model_uri)


def unread_model_size(base_model_uri: str) -> ModelSizeRead:
    """The size of a base model the operator does not read: the estimate assumes one."""
    return ModelSizeRead(base_model_uri, error=NOT_READ_BY_OPERATOR)
