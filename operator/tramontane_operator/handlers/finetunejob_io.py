"""Blocking storage reads of the FineTuneJob handlers (run in a worker thread, never on the loop).

The one seam between the operator and storage: the datasets (validated with the workers'
contract, streaming), the trainer's `progress.json` under the output URI, and the base model's
`config.json` (to count its parameters for the estimate). `file://` and plain paths are read
directly; other schemes go through fsspec when its backend is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import fsspec
from pydantic import ValidationError

from tramontane_operator.api.v1alpha1 import FineTuneJob
from tramontane_workers.contract.datasets import DatasetSummary, DatasetUnreadable, validate_uri
from tramontane_workers.contract.estimate import params_from_hf_config
from tramontane_workers.contract.train_config import PROGRESS_FILE, TrainProgress


@dataclass(frozen=True)
class DatasetReport:
    training: list[DatasetSummary]
    validation: list[DatasetSummary]


def validate_datasets(job: FineTuneJob, max_errors: int = 10) -> DatasetReport:
    """Validate every training and validation file; DatasetUnreadable names the file."""
    training = [validate_uri(f.uri, max_errors=max_errors) for f in job.spec.training_files]
    validation = [
        validate_uri(f.uri, max_errors=max_errors) for f in job.spec.validation_files or []
    ]
    return DatasetReport(training, validation)


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


def model_params(base_model_uri: str) -> float | None:
    """Parameters of the base model from its config.json; None when it cannot be read."""
    if base_model_uri.startswith("hf://"):
        return None  # the hub is not reachable from every control plane; assume instead
    try:
        text = _read_text(f"{base_model_uri.rstrip('/')}/config.json")
        return None if text is None else float(params_from_hf_config(json.loads(text)))
    except (OSError, ImportError, ValueError):
        return None


__all__ = [
    "DatasetReport",
    "DatasetUnreadable",
    "model_params",
    "read_progress",
    "validate_datasets",
]
