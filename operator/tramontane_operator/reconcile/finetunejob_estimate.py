"""From dataset validation to the job's `ValidationResult` and `status.estimate`.

Pure. The input is the workers' `DatasetsReport`, built here from the summaries of an
in-process validation or parsed from a validation Job's termination message. Errors are
rendered `URI:LINE: path: message` (the CLI's format); the estimate comes from the workers'
contract (`contract.estimate`) over the training files only, for the job's GPU type (every
known profile for a CPU job), priced with the cheapest `pricing.gpuHour` among the
ComputeClusters that list it. The base model's size comes as the I/O seam read it
(`handlers.finetunejob_io.model_params`); where it could not be read, the estimate assumes one
and says so (`modelParamsSource: Assumed`, `assumptions`, and the `Validated` message).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tramontane_api.v1alpha1 import ComputeCluster, FineTuneJob
from tramontane_api.v1alpha1.finetunejob import Estimate
from tramontane_workers.contract.datasets import DatasetSummary
from tramontane_workers.contract.datasets_report import DatasetsReport
from tramontane_workers.contract.estimate import Estimate as ContractEstimate
from tramontane_workers.contract.estimate import (
    ModelParams,
    ModelSizeRead,
    TrainingShape,
    estimate,
)

from .finetunejob_inputs import ValidationResult

MAX_ERRORS: Final = 10


def status_estimate(result: ContractEstimate) -> Estimate:
    """The contract's estimate in the FineTuneJob status' shape."""
    return Estimate.model_validate(
        {
            **result.model_dump(exclude={"gpus", "per_gpu_type"}),
            "per_gpu_type": [r.model_dump(exclude={"fits_in_memory"}) for r in result.per_gpu_type]
            or None,
            "assumptions": result.assumptions or None,
        }
    )


def _prices(job: FineTuneJob, clusters: Sequence[ComputeCluster]) -> tuple[dict[str, float], str]:
    best: dict[str, tuple[float, str]] = {}
    for cc in clusters:
        pricing = cc.spec.pricing
        for gpu_type, price in ((pricing.gpu_hour or {}) if pricing else {}).items():
            if gpu_type not in best or price < best[gpu_type][0]:
                best[gpu_type] = (price, pricing.currency if pricing else "USD")
    wanted = job.spec.resources.gpu_type
    currency = best[wanted][1] if wanted in best else "USD"
    return {t: p for t, (p, _) in best.items()}, currency


def validation_result(
    job: FineTuneJob,
    training: Sequence[DatasetSummary],
    validation: Sequence[DatasetSummary],
    model_size: ModelSizeRead | None,
    clusters: Sequence[ComputeCluster] = (),
) -> ValidationResult:
    """The result of validating the job's files here (summaries of each file)."""
    report = DatasetsReport.of(training, validation)
    return report_result(job, report, model_size, clusters)


def report_result(
    job: FineTuneJob,
    report: DatasetsReport,
    model_size: ModelSizeRead | None,
    clusters: Sequence[ComputeCluster] = (),
) -> ValidationResult:
    """Bad lines of every file first; the estimate only when all are valid. An unreadable
    report is not a result (the caller reports it and tries again). `model_size` is what
    reading the base model gave (None: no base model URI); a size that could not be read is
    assumed, and the estimate says so."""
    if report.unreadable is not None:
        raise ValueError(f"report of an unreadable dataset: {report.unreadable}")
    errors = tuple(e.describe() for e in report.errors)[:MAX_ERRORS]
    if report.bad_lines:
        return ValidationResult(False, errors, report.bad_lines, report.lines)
    files = job.spec.training_files
    empty = [files[i].uri for i in report.empty_training if 0 <= i < len(files)]
    if report.empty_training:
        messages = tuple(f"{u}: no conversation" for u in empty) or ("no conversation",)
        return ValidationResult(False, messages, 0, report.lines)
    spec = job.spec
    hp, res = spec.hyperparameters, spec.resources
    prices, currency = _prices(job, clusters)
    result = estimate(
        conversations=report.conversations,
        dataset_tokens=report.tokens,
        shape=TrainingShape(hp.batch_size, hp.sequence_length, hp.training_steps, hp.epochs),
        model_params=ModelParams.of(model_size),
        method=spec.method.type,
        gpus=max(1, res.workers * res.gpus_per_worker),
        gpu_types=[res.gpu_type] if res.gpu_type else None,
        price_per_gpu_hour=prices,
        currency=currency,
    )
    return ValidationResult(
        True,
        (),
        0,
        report.lines,
        status_estimate(result),
        truncated=report.truncated,
        sequence_length=hp.sequence_length,
    )
