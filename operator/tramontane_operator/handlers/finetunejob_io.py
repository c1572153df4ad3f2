"""Blocking reads of local files by the FineTuneJob handlers (worker thread, never the loop).

Local mode only (`OperatorSettings.local_mode`, docs/trust-model.md): the one seam through
which the operator reads tenants' files itself — the datasets (validated with the workers'
contract, streaming), the trainer's `progress.json` under the output directory, and the base
model's `config.json` (to count its parameters for the estimate, or to say why they cannot be
counted). The callers decide when (`reconcile.finetunejob_trust`); as a second line of
defence every function here refuses a URI that is not a local file (`is_local`), so nothing
here ever reaches an object store, a hub or a claim with the operator's identity.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_operator.reconcile.finetunejob_trust import is_local, unread_model_size
from tramontane_workers.contract.datasets_report import DatasetsReport, validate_files
from tramontane_workers.contract.estimate import ModelSizeRead, params_from_hf_config
from tramontane_workers.contract.train_config import PROGRESS_FILE, TrainProgress


def validate_datasets(job: FineTuneJob) -> DatasetsReport:
    """Validate every training and validation file here (`unreadable` names a missing one);
    the same report a validation Job writes in a member cluster. ValueError when a file is
    not local (those are validated in the member cluster, never here)."""
    training = [f.uri for f in job.spec.training_files]
    validation = [f.uri for f in job.spec.validation_files or []]
    remote = [u for u in [*training, *validation] if not is_local(u)]
    if remote:
        raise ValueError(f"not a local file, not read by the operator: {remote[0]}")
    return validate_files(
        training, validation, max_seq_len=job.spec.hyperparameters.sequence_length
    )


def _path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path) if parsed.scheme == "file" else uri)


def _read_text(uri: str) -> str | None:
    """The text of a local file; None when it does not exist."""
    try:
        return _path(uri).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def read_progress(output_uri: str) -> TrainProgress | None:
    """The trainer's progress.json in a local output directory, or None while it has written
    none (or half of one), or when the output is not local."""
    if not is_local(output_uri):
        return None
    try:
        text = _read_text(f"{output_uri.rstrip('/')}/{PROGRESS_FILE}")
    except (OSError, ValueError):
        return None
    if text is None:
        return None
    try:
        return TrainProgress.model_validate_json(text)
    except ValidationError:
        return None


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def model_params(base_model_uri: str) -> ModelSizeRead:
    """Parameters of a local base model from its config.json, or why they cannot be read (the
    estimate then assumes a size and says so); a model elsewhere is not read here."""
    if not is_local(base_model_uri):
        return unread_model_size(base_model_uri)
    config_uri = f"{base_model_uri.rstrip('/')}/config.json"
    try:
        text = _read_text(config_uri)
    except (OSError, ValueError) as exc:
        return ModelSizeRead(base_model_uri, error=f"{config_uri}: {_why(exc)}")
    if text is None:
        return ModelSizeRead(base_model_uri, error=f"{config_uri}: not found")
    try:
        config = json.loads(text)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        params = float(params_from_hf_config(config))
    except (ValueError, ZeroDivisionError) as exc:
        return ModelSizeRead(base_model_uri, error=f"{config_uri}: {_why(exc)}")
    if params <= 0:
        return ModelSizeRead(base_model_uri, error=f"{config_uri}: counts {params:g} parameters")
    return ModelSizeRead(base_model_uri, params=params)


__all__ = [
    "model_params",
    "read_progress",
    "validate_datasets",
]
