"""What an Evaluation runs on: its models resolved, its quota workload, the trust checks.

Pure. `resolve` turns the spec's target and baseline (a ModelDeployment reference plus at
most one adapter) into the evaluator's `EvalTarget`s, from the hub's ModelDeployments and
FineTuneJobs in the namespace: an object not there (yet), an adapter not served (yet) or a
FineTuneJob still training is a reason to wait; a FineTuneJob that ended without an adapter
is an error. Outside local mode a `file://` URI (dataset, base model, adapter) is refused, as
a FineTuneJob's are (`finetunejob_trust`). The workload is one pool of the target
ModelDeployment's GPUs (`resources.gpu` type x count; none on CPU), counted like a
FineTuneJob's against the tenant's GPU quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from tramontane_api.v1alpha1 import Evaluation, FineTuneJob, ModelDeployment
from tramontane_api.v1alpha1.evaluation import EvaluationModel
from tramontane_operator.quotas import Workload
from tramontane_workers.contract.datasets_report import DatasetsReport
from tramontane_workers.contract.eval_config import EvalTarget

from .admission import created_at
from .finetunejob_inputs import ValidationResult
from .finetunejob_trust import LOCAL_PATH_REFUSED, is_local

_ENDED_WITHOUT_ADAPTER = frozenset({"Failed", "FailedValidation", "Cancelled"})


@dataclass(frozen=True)
class EvalValidation:
    """The dataset's validation: ok, or why not (the first bad lines)."""

    ok: bool
    message: str
    reason: str = "InvalidDataset"


@dataclass(frozen=True)
class Resolution:
    """The models to score, or why not yet (`waiting`) or never (`error`, `reason`)."""

    target: EvalTarget | None = None
    baseline: EvalTarget | None = None
    model_deployment: ModelDeployment | None = None  # the target's: runtime and GPUs
    waiting: str | None = None
    error: str | None = None
    reason: str | None = None


def _adapter_of_job(job: FineTuneJob | None, name: str, where: str) -> tuple[str | None, str, bool]:
    """(URI, why not, final) of FineTuneJob `name`'s adapter."""
    if job is None:
        return None, f"{where}: FineTuneJob {name} not found", False
    status = job.status
    if status is not None and status.adapter is not None:
        return status.adapter.uri, "", False
    phase = status.phase if status is not None else None
    if phase in _ENDED_WITHOUT_ADAPTER or (phase == "Succeeded" and job.spec.dry_run):
        return None, f"{where}: FineTuneJob {name} ended ({phase}) without an adapter", True
    return None, f"{where}: FineTuneJob {name} has not produced its adapter yet ({phase})", False


def resolve_model(
    model: EvaluationModel,
    where: str,
    deployments: Mapping[str, ModelDeployment],
    jobs: Mapping[str, FineTuneJob],
) -> tuple[EvalTarget | None, ModelDeployment | None, str, bool]:
    """(target, its ModelDeployment, why not, whether that is final) of one model."""
    name = model.model_deployment_ref.name
    md = deployments.get(name)
    if md is None:
        return None, None, f"{where}.modelDeploymentRef: ModelDeployment {name} not found", False
    label, adapter_uri = name, None
    if model.adapter is not None:
        label = f"{name}:{model.adapter}"
        served = {a.name: a for a in md.spec.adapters or []}
        entry = served.get(model.adapter)
        if entry is None:
            why = f"{where}.adapter: ModelDeployment {name} serves no adapter {model.adapter}"
            return None, md, why, False
        if entry.uri is not None:
            adapter_uri = entry.uri
        elif entry.fine_tune_job_ref is not None:
            ref = entry.fine_tune_job_ref.name
            adapter_uri, why, final = _adapter_of_job(jobs.get(ref), ref, f"{where}.adapter")
            if adapter_uri is None:
                return None, md, why, final
    elif model.adapter_uri is not None:
        label, adapter_uri = f"{name}+{model.adapter_uri}", model.adapter_uri
    elif model.fine_tune_job_ref is not None:
        ref = model.fine_tune_job_ref.name
        label = f"{name}+{ref}"
        adapter_uri, why, final = _adapter_of_job(jobs.get(ref), ref, f"{where}.fineTuneJobRef")
        if adapter_uri is None:
            return None, md, why, final
    target = EvalTarget(label=label, base_model_uri=md.spec.model.source, adapter_uri=adapter_uri)
    return target, md, "", False


def resolve(
    ev: Evaluation,
    deployments: Mapping[str, ModelDeployment],
    jobs: Mapping[str, FineTuneJob],
    local_mode: bool,
) -> Resolution:
    """The target and baseline of `ev`, from the ModelDeployments and FineTuneJobs of its
    namespace (by name)."""
    spec = ev.spec
    target, md, why, final = resolve_model(spec.target, "spec.target", deployments, jobs)
    if target is None:
        return Resolution(error=why) if final else Resolution(waiting=why)
    baseline = None
    if spec.baseline is not None:
        baseline, _, why, final = resolve_model(spec.baseline, "spec.baseline", deployments, jobs)
        if baseline is None:
            return Resolution(error=why) if final else Resolution(waiting=why)
    refused = [] if local_mode else local_uris(ev, target, baseline)
    if refused:
        return Resolution(error="; ".join(refused), reason=LOCAL_PATH_REFUSED)
    return Resolution(target=target, baseline=baseline, model_deployment=md)


def local_uris(ev: Evaluation, target: EvalTarget, baseline: EvalTarget | None) -> list[str]:
    """Each `file://` URI the run would read, named by field (refused outside local mode)."""
    uses = [("spec.dataset.uri", ev.spec.dataset.uri)]
    for where, model in (("spec.target", target), ("spec.baseline", baseline)):
        if model is None:
            continue
        uses.append((f"{where} (its ModelDeployment's spec.model.source)", model.base_model_uri))
        if model.adapter_uri is not None:
            uses.append((f"{where} adapter", model.adapter_uri))
    return [
        f"{field}: file:// URIs are read only in local mode (got {uri!r})"
        for field, uri in uses
        if is_local(uri)
    ]


def eval_gpus(md: ModelDeployment | None) -> dict[str, int]:
    """GPU type -> GPUs of one pool of `md` (a replica's `resources.gpu`); none on CPU."""
    gpu = md.spec.resources.gpu if md is not None else None
    return {gpu.type: gpu.count} if gpu is not None and gpu.count else {}


def eval_workload(
    ev: Evaluation,
    md: ModelDeployment | None,
    created: datetime,
    admitted: bool,
    cluster: str | None = None,
) -> Workload:
    """The Evaluation as quotas count it; `cluster`: where it holds its GPUs once placed."""
    gpus = eval_gpus(md)
    return Workload(
        kind="Evaluation",
        namespace=ev.metadata.namespace or "default",
        name=ev.metadata.name,
        created=created,
        gpus=gpus,
        priority=ev.spec.priority,
        admitted=admitted,
        clusters={cluster: gpus} if cluster and admitted and gpus else {},
    )


def validation_of(report: DatasetsReport) -> EvalValidation | None:
    """The dataset's validation from the workers' report; None when the file could not be
    read (it may appear: validated again later)."""
    if report.unreadable is not None:
        return None
    if report.ok:
        return EvalValidation(True, f"{report.lines} lines valid")
    errors = tuple(e.describe() for e in report.errors)
    if not errors and report.empty_training:
        errors = ("spec.dataset.uri: no conversation in the dataset",)
    result = ValidationResult(False, errors, bad_lines=report.bad_lines, lines=report.lines)
    return EvalValidation(False, result.message())


def queued_workloads(
    evaluations: Iterable[Evaluation],
    deployments: Iterable[ModelDeployment],
    holding: Iterable[str],
) -> list[Workload]:
    """The Evaluations waiting for their tenant's quota (Queued by it, holding nothing), as
    the admission queue counts them; one waiting for a cluster holds no place in it."""
    mds = {(m.metadata.namespace or "", m.metadata.name): m for m in deployments}
    held = set(holding)
    out = []
    for ev in evaluations:
        status = ev.status
        if status is None or status.phase != "Queued" or status.queue_position is None:
            continue
        namespace = ev.metadata.namespace or ""
        md = mds.get((namespace, ev.spec.target.model_deployment_ref.name))
        workload = eval_workload(ev, md, created_at(ev), admitted=False)
        if workload.key not in held:
            out.append(workload)
    return out
