"""Blocking storage reads of the FineTuneJob handlers (run in a worker thread, never on the loop).

The one seam between the operator and storage: the datasets (validated with the workers'
contract, streaming), the trainer's `progress.json` under the output URI, and the base model's
`config.json` (to count its parameters for the estimate, or to say why they cannot be counted:
`hf://` models are never fetched here). `file://` and plain paths are read directly; other
schemes go through fsspec when its backend is installed.
"""

from __future__ import annotations

import json

import fsspec
from pydantic import ValidationError

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_workers.contract.datasets_report import DatasetsReport, validate_files
from tramontane_workers.contract.estimate import ModelSizeRead, params_from_hf_config
from tramontane_workers.contract.train_config import PROGRESS_FILE, TrainProgress


def validate_datasets(job: FineTuneJob) -> DatasetsReport:
    """Validate every training and validation file here (`unreadable` names a missing one);
    the same report a validation Job writes where the files are on claims."""
    return validate_files(
        [f.uri for f in job.spec.training_files],
        [f.uri for f in job.spec.validation_files or []],
        max_seq_len=job.spec.hyperparameters.sequence_length,
    )


def _read_text(uri: str) -> str | None:
    try:
        with fsspec.open(uri, "r", encoding="utf-8") as src:
            text: str = src.read()
            return text
    except FileNotFoundError:
        return None


def read_progress(output_uri: str) -> TrainProgress | None:
    """The trainer's progress.json, or None while it has written none (or half of one)."""
    try:
        text = _read_text(f"{output_uri.rstrip('/')}/{PROGRESS_FILE}")
    except (OSError, ImportError, ValueError):
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
    """Parameters of the base model from its config.json, or why they cannot be read (the
    estimate then assumes a size and says so)."""
    if base_model_uri.startswith("hf://"):  # the hub is not reachable from every control plane
        return ModelSizeRead(base_model_uri, error="the operator does not fetch hf:// models")
    if base_model_uri.startswith("pvc://"):
        return ModelSizeRead(base_model_uri, error="pvc:// claims are not mounted in the operator")
    config_uri = f"{base_model_uri.rstrip('/')}/config.json"
    try:
        text = _read_text(config_uri)
    except (OSError, ImportError, ValueError) as exc:
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
