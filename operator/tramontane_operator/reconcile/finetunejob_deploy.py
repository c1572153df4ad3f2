"""Auto-deploy of a finished FineTuneJob: the adapter entry to add to a ModelDeployment.

Pure. `autoDeploy.modelDeploymentRef` is a local reference, so the ModelDeployment is in the
job's namespace and therefore belongs to the same tenant (a namespace has one owner); what can
still go wrong is checked here: the ModelDeployment must serve the base model the adapter was
trained on, and the adapter name must not already serve something else, unless its entry has a
`rollout`: then the job's output becomes that adapter's new version (its `uri`), promoted as a
canary and rolled back on a breach (`reconcile/rollout.py`). Without a rollout an auto-deploy
never replaces what an adapter serves: that would move all its traffic at once, unjudged.

With a deployment gate (`autoDeploy.evaluation`) the adapter is added only once the gate's
Evaluation (`<job>-gate`, owned by the job, created when training succeeds: `gate_evaluation`)
has passed; a failed or broken one leaves it stored but not served (`GateOutcome`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from tramontane_api.v1alpha1 import API_VERSION, Evaluation, FineTuneJob, ModelDeployment
from tramontane_api.v1alpha1.evaluation import MAX_NAME_LENGTH as MAX_EVALUATION_NAME
from tramontane_operator.builders.labels import MANAGED_BY, MANAGED_BY_LABEL, owner_reference
from tramontane_operator.builders.validation_job import suffixed_name

ADAPTER_DEPLOYED: Final = "AdapterDeployed"
MODEL_DEPLOYMENT_NOT_FOUND: Final = "ModelDeploymentNotFound"
BASE_MODEL_MISMATCH: Final = "BaseModelMismatch"
ADAPTER_NAME_CONFLICT: Final = "AdapterNameConflict"
DEPLOY_FAILED: Final = "DeployFailed"
EVALUATING: Final = "Evaluating"
EVALUATION_FAILED: Final = "EvaluationFailed"
# Set on an Evaluation a FineTuneJob's deployment gate created: the job's name.
GATE_OF_LABEL: Final = "tramontane.dev/gate-of"


@dataclass(frozen=True)
class DeployOutcome:
    """What happened when the adapter was (or could not be) added to the ModelDeployment."""

    deployed: bool
    reason: str
    message: str


def trained_on(job: FineTuneJob, md: ModelDeployment) -> bool:
    """Whether `md` serves the base model `job` fine-tuned."""
    base = job.spec.base_model
    if base.model_deployment_ref is not None:
        return base.model_deployment_ref.name == md.metadata.name
    return base.uri == md.spec.model.source


def adapters_with(
    job: FineTuneJob, md: ModelDeployment | None, adapter_uri: str
) -> tuple[list[dict[str, Any]] | None, DeployOutcome]:
    """The ModelDeployment's `spec.adapters` with the job's adapter added (None: nothing to
    write, because it is already there or cannot be added; the outcome says which)."""
    deploy = job.spec.auto_deploy
    if deploy is None:
        raise ValueError("spec.autoDeploy is not set")
    ref, name = deploy.model_deployment_ref.name, deploy.adapter_name
    if md is None:
        return None, DeployOutcome(
            False, MODEL_DEPLOYMENT_NOT_FOUND, f"ModelDeployment {ref} not found in the namespace"
        )
    if not trained_on(job, md):
        return None, DeployOutcome(
            False,
            BASE_MODEL_MISMATCH,
            f"ModelDeployment {ref} serves {md.spec.model.source}, not the base model "
            "this adapter was trained on",
        )
    current = [a.model_dump(by_alias=True, exclude_none=True) for a in md.spec.adapters or []]
    for adapter in current:
        if adapter["name"] != name:
            continue
        if adapter.get("uri") == adapter_uri:
            return None, DeployOutcome(True, ADAPTER_DEPLOYED, f"adapter {name} served by {ref}")
        if adapter.get("rollout") is not None:
            entry = {k: v for k, v in adapter.items() if k != "fineTuneJobRef"}
            entry["uri"] = adapter_uri
            pinned = f" (version {adapter['version']} stays pinned)" if "version" in adapter else ""
            return [entry if a is adapter else a for a in current], DeployOutcome(
                True,
                ADAPTER_DEPLOYED,
                f"adapter {name} of {ref}: new version rolled out as a canary{pinned}",
            )
        return None, DeployOutcome(
            False,
            ADAPTER_NAME_CONFLICT,
            f"ModelDeployment {ref} already has an adapter named {name} with another source "
            "(give its entry a rollout to deploy this as its new version)",
        )
    added = [*current, {"name": name, "uri": adapter_uri}]
    return added, DeployOutcome(True, ADAPTER_DEPLOYED, f"adapter {name} added to {ref}")


@dataclass(frozen=True)
class GateOutcome:
    """The deployment gate's Evaluation as last seen: its phase for the current run (None:
    not created yet) and its message (the failed thresholds, when it failed)."""

    name: str
    phase: str | None = None
    message: str = ""


def gate_name(job: FineTuneJob) -> str:
    """`<job>-gate`, shortened with a digest when the job's name is long."""
    return suffixed_name(job.metadata.name, "-gate", MAX_EVALUATION_NAME)


def gate_baseline(job: FineTuneJob, md: ModelDeployment | None) -> dict[str, Any] | None:
    """The gate's baseline: None; the base model (`BaseModel`); or `Current`, the adapter the
    ModelDeployment serves under `adapterName` now, else its base model."""
    deploy = job.spec.auto_deploy
    gate = deploy.evaluation if deploy is not None else None
    if deploy is None or gate is None or gate.baseline == "None":
        return None
    ref = {"modelDeploymentRef": {"name": deploy.model_deployment_ref.name}}
    served = {a.name for a in (md.spec.adapters or [])} if md is not None else set()
    if gate.baseline == "Current" and deploy.adapter_name in served:
        return {**ref, "adapter": deploy.adapter_name}
    return ref


def gate_evaluation(job: FineTuneJob, md: ModelDeployment | None) -> dict[str, Any]:
    """The Evaluation of `job`'s adapter its deployment gate asks for, owned by the job."""
    deploy = job.spec.auto_deploy
    gate = deploy.evaluation if deploy is not None else None
    if deploy is None or gate is None:
        raise ValueError("spec.autoDeploy.evaluation is not set")
    spec: dict[str, Any] = {
        "target": {
            "modelDeploymentRef": {"name": deploy.model_deployment_ref.name},
            "fineTuneJobRef": {"name": job.metadata.name},
        },
        "dataset": {"uri": gate.dataset.uri},
        "metrics": [m.model_dump(by_alias=True, exclude_none=True) for m in gate.metrics],
        "priority": job.spec.priority,
    }
    baseline = gate_baseline(job, md)
    if baseline is not None:
        spec["baseline"] = baseline
    if gate.max_samples is not None:
        spec["maxSamples"] = gate.max_samples
    metadata: dict[str, Any] = {
        "name": gate_name(job),
        "namespace": job.metadata.namespace or "default",
        "labels": {MANAGED_BY_LABEL: MANAGED_BY, GATE_OF_LABEL: job.metadata.name},
    }
    reference = owner_reference(job)
    if reference is not None:
        metadata["ownerReferences"] = [reference]
    return {"apiVersion": API_VERSION, "kind": "Evaluation", "metadata": metadata, "spec": spec}


def gate_outcome(job: FineTuneJob, ev: Evaluation | None) -> GateOutcome:
    """How the gate's Evaluation `ev` (None: absent) stands for `job`. An Evaluation of
    another job (same name, not labelled as this job's gate) is left alone, and the gate
    fails: the job's Deployed condition says why."""
    name = gate_name(job)
    if ev is None:
        return GateOutcome(name)
    if (ev.metadata.labels or {}).get(GATE_OF_LABEL) != job.metadata.name:
        return GateOutcome(name, "Error", f"Evaluation {name} exists and is not this job's gate")
    status = ev.status
    if status is None or status.observed_generation != ev.metadata.generation:
        return GateOutcome(name, "Pending", "")
    return GateOutcome(name, status.phase, status.message or "")
