"""`tramontane finetune estimate`: the dry run of a FineTuneJob, on this machine.

Given a FineTuneJob manifest (or dataset files and hyperparameters as flags), validate the
training files with the same code the job runs, then print steps, train tokens, duration,
GPU-hours and cost per GPU type. `--json` prints exactly what the operator would write to
`status.estimate` (camelCase, validated against the FineTuneJob API model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tramontane_api.v1alpha1 import ComputeCluster, FineTuneJob
from tramontane_api.v1alpha1.finetunejob import Estimate as StatusEstimate
from tramontane_cli.commands.dataset import EXIT_BAD_LINES, EXIT_UNREADABLE, format_summary
from tramontane_workers.contract.datasets import DatasetSummary, DatasetUnreadable, validate_uri
from tramontane_workers.contract.estimate import (
    Estimate,
    TrainingShape,
    estimate,
    params_from_hf_config,
)

EXIT_USAGE = 2
MISTRAL_7B_PARAMS = 7_248_023_552  # Mistral 7B v0.3 (32,768 vocabulary)


class UsageError(Exception):
    """Bad flags or manifest; printed and exit 2."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tuning jobs")
    actions = parser.add_subparsers(dest="finetune_command", metavar="ACTION")
    actions.required = True
    est = actions.add_parser("estimate", help="validate the data and estimate duration and cost")
    est.add_argument("manifest", nargs="?", help="FineTuneJob YAML (or use --dataset and flags)")
    est.add_argument("--dataset", action="append", default=[], help="training file (repeatable)")
    est.add_argument("--training-steps", type=int)
    est.add_argument("--epochs", type=float)
    est.add_argument("--batch-size", type=int, default=8)
    est.add_argument("--sequence-length", type=int, default=4096)
    est.add_argument("--gpus", type=int, help="GPUs in total (default: from the manifest, or 1)")
    est.add_argument("--gpu-type", action="append", help="GPU type(s) to estimate for")
    est.add_argument("--model-params", type=float, help="base model parameters (e.g. 7.2e9)")
    est.add_argument("--cluster", help="ComputeCluster YAML whose pricing to use")
    est.add_argument("--price-per-gpu-hour", type=float, help="price for every GPU type")
    est.add_argument("--currency", default=None)
    est.add_argument("--json", action="store_true", help="print status.estimate as JSON")
    est.set_defaults(func=run_estimate)


def _load_yaml(path: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected one YAML object")
    return doc


def _model_params(job: FineTuneJob | None, flag: float | None) -> tuple[float, str]:
    if flag is not None:
        return flag, "--model-params"
    uri = job.spec.base_model.uri if job is not None else None
    if uri and uri.startswith("file://"):
        config = Path(uri.removeprefix("file://")) / "config.json"
        try:
            return float(params_from_hf_config(json.loads(config.read_text()))), str(config)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot count the base model's parameters: {exc}") from exc
    return float(MISTRAL_7B_PARAMS), "assumed Mistral 7B (set --model-params)"


def _inputs(args: argparse.Namespace) -> tuple[FineTuneJob | None, list[str], TrainingShape, int]:
    if args.manifest is None:
        if not args.dataset:
            raise UsageError("give a FineTuneJob manifest or at least one --dataset")
        if args.training_steps is not None and args.epochs is not None:
            raise UsageError("give --training-steps or --epochs, not both")
        epochs = args.epochs if args.training_steps is None and args.epochs else None
        shape = TrainingShape(
            batch_size=args.batch_size,
            sequence_length=args.sequence_length,
            training_steps=args.training_steps,
            epochs=1.0 if args.training_steps is None and epochs is None else epochs,
        )
        return None, list(args.dataset), shape, args.gpus or 1
    try:
        job = FineTuneJob.model_validate(_load_yaml(args.manifest))
    except ValidationError as exc:
        raise UsageError(f"{args.manifest}: not a valid FineTuneJob:\n{exc}") from exc
    hp, res = job.spec.hyperparameters, job.spec.resources
    shape = TrainingShape(hp.batch_size, hp.sequence_length, hp.training_steps, hp.epochs)
    gpus = args.gpus or max(1, res.workers * res.gpus_per_worker)
    return job, [f.uri for f in job.spec.training_files], shape, gpus


def _prices(args: argparse.Namespace, gpu_types: list[str]) -> tuple[dict[str, float], str | None]:
    if args.cluster:
        cluster = ComputeCluster.model_validate(_load_yaml(args.cluster))
        pricing = cluster.spec.pricing
        if pricing is None or not pricing.gpu_hour:
            return {}, None
        return dict(pricing.gpu_hour), pricing.currency
    if args.price_per_gpu_hour is not None:
        return {t: args.price_per_gpu_hour for t in gpu_types}, args.currency or "USD"
    return {}, None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _print_table(result: Estimate, params_note: str) -> None:
    print(
        f"{result.steps} steps, {result.epochs:g} epochs, {result.train_tokens:,} train tokens "
        f"(dataset {result.dataset_tokens:,} tokens), {result.gpus} GPU(s); model: {params_note}"
    )
    print(
        f"{'GPU type':<14}{'tokens/s/GPU':>14}{'duration':>12}{'GPU-hours':>11}{'cost':>14}  fits"
    )
    for row in result.per_gpu_type:
        cost = f"{row.cost:,.2f} {row.currency}" if row.cost is not None else "-"
        fits = "yes" if row.fits_in_memory else "NO"
        print(
            f"{row.gpu_type:<14}{row.tokens_per_second_per_gpu:>14,.0f}"
            f"{_duration(row.duration_seconds):>12}"
            f"{row.gpu_hours:>11.2f}{cost:>14}  {fits}"
        )


def run_estimate(args: argparse.Namespace) -> int:
    try:
        job, uris, shape, gpus = _inputs(args)
        params, params_note = _model_params(job, args.model_params)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summaries: list[DatasetSummary] = []
    for uri in uris:
        try:
            summaries.append(validate_uri(uri))
        except DatasetUnreadable as exc:
            print(f"{uri}: cannot read: {exc}", file=sys.stderr)
            return EXIT_UNREADABLE
    bad = [s for s in summaries if not s.ok]
    for summary in bad:
        for error in summary.errors:
            print(f"{summary.source}:{error.line}: {error.describe()}")
        print(format_summary(summary))
    if bad:
        return EXIT_BAD_LINES
    gpu_types = args.gpu_type or (
        [job.spec.resources.gpu_type] if job is not None and job.spec.resources.gpu_type else None
    )
    try:
        prices, currency = _prices(args, gpu_types or [])
        result = estimate(
            conversations=sum(s.conversations for s in summaries),
            dataset_tokens=sum(s.tokens for s in summaries),
            shape=shape,
            model_params=params,
            method=job.spec.method.type if job is not None else "lora",
            gpus=gpus,
            gpu_types=gpu_types,
            price_per_gpu_hour=prices,
            currency=currency,
        )
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        status = StatusEstimate.model_validate(
            result.model_dump(exclude={"gpus"})
            | {
                "per_gpu_type": [
                    r.model_dump(exclude={"fits_in_memory"}) for r in result.per_gpu_type
                ]
            }
        )
        print(status.model_dump_json(by_alias=True, exclude_none=True))
    else:
        _print_table(result, params_note)
    return 0
