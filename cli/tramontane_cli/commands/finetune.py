"""`tramontane finetune estimate`: the dry run of a FineTuneJob, on this machine (the job
actions, `submit`, `list`, `get`, `logs` and `cancel`, are in `finetune_jobs`).

Given a FineTuneJob manifest (or dataset files and hyperparameters as flags), validate the
training files with the same code the job runs, then print steps, train tokens, duration,
GPU-hours and cost per GPU type. `--json` prints exactly what the operator would write to
`status.estimate` (camelCase, validated against the FineTuneJob API model).

The base model's size comes from `--model-params`, else from a `file://` model's config.json;
otherwise (an `hf://` or bucket model, or no manifest) it is assumed, and the output says so:
a line beginning `assumed:` under the table, `modelParamsSource: Assumed` and `assumptions` in
the JSON. An assumed size still gives an estimate (exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tramontane_api.v1alpha1 import ComputeCluster, FineTuneJob
from tramontane_api.v1alpha1.finetunejob import Estimate as StatusEstimate
from tramontane_cli.args import (
    EXIT_CODES_EPILOG,
    EXIT_INVALID,
    EXIT_USAGE,
    non_negative_float,
    positive_float,
    positive_int,
)
from tramontane_cli.commands.dataset import print_dataset_problems
from tramontane_cli.manifest import ManifestError, load_model
from tramontane_workers.contract.datasets import DatasetSummary, DatasetUnreadable, validate_uri
from tramontane_workers.contract.estimate import (
    GPU_PROFILES,
    Estimate,
    ModelParams,
    ModelSizeRead,
    TrainingShape,
    estimate,
    gpu_profile,
    params_from_hf_config,
    params_in_words,
)

DEFAULT_BATCH_SIZE = 8
DEFAULT_SEQUENCE_LENGTH = 4096
KNOWN_GPU_TYPES = ", ".join(p.name for p in GPU_PROFILES)


class UsageError(Exception):
    """Bad flags or manifest; printed and exit 2."""


def known_gpu_type(text: str) -> str:
    """A GPU type name with a throughput profile ('A100-80GB', 'nvidia-h100-sxm', 'L4')."""
    if gpu_profile(text) is None:
        raise argparse.ArgumentTypeError(
            f"unknown GPU type {text!r}; known: {KNOWN_GPU_TYPES} "
            "(a name containing one, such as A100-80GB, also works)"
        )
    return text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tuning jobs")
    actions = parser.add_subparsers(dest="finetune_command", metavar="ACTION")
    actions.required = True
    est = actions.add_parser(
        "estimate",
        help="validate the data and estimate duration and cost",
        description="Validate the training data, then estimate steps, duration, GPU-hours "
        "and cost per GPU type. Flags given with a manifest override its hyperparameters.",
        epilog=EXIT_CODES_EPILOG,
    )
    est.add_argument("manifest", nargs="?", help="FineTuneJob YAML (or use --dataset and flags)")
    est.add_argument("--dataset", action="append", default=[], help="training file (repeatable)")
    est.add_argument("--training-steps", type=positive_int, help="optimizer steps")
    est.add_argument("--epochs", type=positive_float, help="passes over the data (may be 0.5)")
    est.add_argument(
        "--batch-size", type=positive_int, help=f"sequences per step (default {DEFAULT_BATCH_SIZE})"
    )
    est.add_argument(
        "--sequence-length",
        type=positive_int,
        help=f"tokens per sequence (default {DEFAULT_SEQUENCE_LENGTH})",
    )
    est.add_argument(
        "--gpus", type=positive_int, help="GPUs in total (default: from the manifest, or 1)"
    )
    est.add_argument(
        "--gpu-type",
        action="append",
        type=known_gpu_type,
        help=f"GPU type(s) to estimate for; known: {KNOWN_GPU_TYPES}",
    )
    est.add_argument(
        "--model-params", type=positive_float, help="base model parameters (e.g. 7.2e9)"
    )
    est.add_argument("--cluster", help="ComputeCluster YAML whose pricing to use")
    est.add_argument(
        "--price-per-gpu-hour", type=non_negative_float, help="price for every GPU type"
    )
    est.add_argument("--currency", default=None)
    est.add_argument("--json", action="store_true", help="print status.estimate as JSON")
    est.set_defaults(func=run_estimate)
    from tramontane_cli.commands import finetune_jobs

    finetune_jobs.register_actions(actions)


def _model_params(job: FineTuneJob | None, flag: float | None) -> tuple[ModelParams, str]:
    """The base model size to use, and where it came from in words."""
    if flag is not None:
        return ModelParams(flag, "Given"), "--model-params"
    if job is None:
        return ModelParams.assumed("no manifest names a base model"), "assumed"
    base = job.spec.base_model
    uri = base.uri
    if uri is None:
        ref = base.model_deployment_ref.name if base.model_deployment_ref else "?"
        why = f"spec.baseModel.modelDeploymentRef {ref}: the CLI does not look ModelDeployments up"
        return ModelParams.assumed(why), "assumed"
    if uri.startswith("file://"):
        config = Path(uri.removeprefix("file://")) / "config.json"
        try:
            params = float(params_from_hf_config(json.loads(config.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError, ZeroDivisionError) as exc:
            raise UsageError(
                f"{config}: cannot count the base model's parameters ({exc}); set --model-params"
            ) from exc
        if params <= 0:
            raise UsageError(f"{config}: counts {params:g} parameters; set --model-params")
        return ModelParams(params, "Read"), f"from {config}"
    scheme = uri.split("://", 1)[0]
    read = ModelSizeRead(uri, error=f"the CLI does not fetch {scheme}:// models")
    return ModelParams.of(read), "assumed"


def _steps_or_epochs(
    args: argparse.Namespace, steps: int | None, epochs: float | None
) -> tuple[int | None, float | None]:
    if args.training_steps is not None and args.epochs is not None:
        raise UsageError("--epochs: give --training-steps or --epochs, not both")
    if args.training_steps is not None:
        return args.training_steps, None
    if args.epochs is not None:
        return None, args.epochs
    if steps is None and epochs is None:
        return None, 1.0
    return steps, epochs


def _inputs(args: argparse.Namespace) -> tuple[FineTuneJob | None, list[str], TrainingShape, int]:
    if args.manifest is None:
        if not args.dataset:
            raise UsageError("--dataset: give a FineTuneJob manifest or at least one --dataset")
        steps, epochs = _steps_or_epochs(args, None, None)
        shape = TrainingShape(
            batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
            sequence_length=args.sequence_length or DEFAULT_SEQUENCE_LENGTH,
            training_steps=steps,
            epochs=epochs,
        )
        return None, list(args.dataset), shape, args.gpus or 1
    if args.dataset:
        raise UsageError("--dataset: the manifest names the training files; drop --dataset")
    job = load_model(args.manifest, FineTuneJob, "FineTuneJob")
    hp, res = job.spec.hyperparameters, job.spec.resources
    steps, epochs = _steps_or_epochs(args, hp.training_steps, hp.epochs)
    shape = TrainingShape(
        args.batch_size or hp.batch_size,
        args.sequence_length or hp.sequence_length,
        steps,
        epochs,
    )
    gpus = args.gpus or max(1, res.workers * res.gpus_per_worker)
    return job, [f.uri for f in job.spec.training_files], shape, gpus


def _gpu_types(args: argparse.Namespace, job: FineTuneJob | None) -> list[str] | None:
    if args.gpu_type:
        return list(args.gpu_type)
    if job is None or not job.spec.resources.gpu_type:
        return None
    name = job.spec.resources.gpu_type
    if gpu_profile(name) is None:
        raise UsageError(
            f"{args.manifest}: spec.resources.gpuType: no throughput profile for {name!r} "
            f"(known: {KNOWN_GPU_TYPES}); pass --gpu-type"
        )
    return [name]


def _prices(args: argparse.Namespace, gpu_types: list[str]) -> tuple[dict[str, float], str | None]:
    if args.cluster:
        cluster = load_model(args.cluster, ComputeCluster, "ComputeCluster")
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
    model = f"{params_in_words(result.model_params)} parameters ({params_note})"
    print(
        f"{result.steps} steps, {result.epochs:g} epochs, {result.train_tokens:,} train tokens "
        f"(dataset {result.dataset_tokens:,} tokens), {result.gpus} GPU(s); model: {model}"
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
    for assumption in result.assumptions:
        print(f"assumed: {assumption}; set --model-params to use the real size")


def _validate(uris: list[str], sequence_length: int) -> list[DatasetSummary] | int:
    """Every dataset's summary, or the exit status after printing what is wrong with them."""
    summaries: list[DatasetSummary] = []
    for uri in uris:
        try:
            summaries.append(validate_uri(uri, max_seq_len=sequence_length))
        except DatasetUnreadable as exc:
            print(f"{uri}: cannot read: {exc}", file=sys.stderr)
            return EXIT_USAGE
    status = 0
    for summary in summaries:
        if print_dataset_problems(summary, list_errors=True):
            status = EXIT_INVALID
    return status or summaries


def run_estimate(args: argparse.Namespace) -> int:
    try:
        job, uris, shape, gpus = _inputs(args)
        params, params_note = _model_params(job, args.model_params)
        gpu_types = _gpu_types(args, job)
        prices, currency = _prices(args, gpu_types or [])
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return exc.code
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    summaries = _validate(uris, shape.sequence_length)
    if isinstance(summaries, int):
        return summaries
    try:
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
    except ValueError as exc:  # defensive: the flags and the data were checked above
        print(f"estimate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        status = StatusEstimate.model_validate(
            result.model_dump(exclude={"gpus"})
            | {
                "per_gpu_type": [
                    r.model_dump(exclude={"fits_in_memory"}) for r in result.per_gpu_type
                ],
                "assumptions": result.assumptions or None,
            }
        )
        print(status.model_dump_json(by_alias=True, exclude_none=True))
    else:
        _print_table(result, params_note)
    return 0
