"""Auto-deploy of a finished FineTuneJob: the adapter entry to add to a ModelDeployment.

Pure. `autoDeploy.modelDeploymentRef` is a local reference, so the ModelDeployment is in the
job's namespace and therefore belongs to the same tenant (a namespace has one owner); what can
still go wrong is checked here: the ModelDeployment must serve the base model the adapter was
trained on, and the adapter name must not already serve something else, unless its entry has a
`rollout`: then the job's output becomes that adapter's new version (its `uri`), promoted as a
canary and rolled back on a breach (`reconcile/rollout.py`). Without a rollout an auto-deploy
never replaces what an adapter serves: that would move all its traffic at once, unjudged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment

ADAPTER_DEPLOYED: Final = "AdapterDeployed"
MODEL_DEPLOYMENT_NOT_FOUND: Final = "ModelDeploymentNotFound"
BASE_MODEL_MISMATCH: Final = "BaseModelMismatch"
ADAPTER_NAME_CONFLICT: Final = "AdapterNameConflict"
DEPLOY_FAILED: Final = "DeployFailed"


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
