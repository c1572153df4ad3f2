"""Build the evaluator's `EvalConfig` and the KubeRay RayJob of one Evaluation run.

The RayJob runs `python -m tramontane_workers.evaluate --config-b64 ...` (the workers'
contract renders the entrypoint) on its own Ray cluster: a head without CPUs for tasks and one
worker pod shaped like one replica of the target ModelDeployment (its `resources`: GPUs, CPU,
memory, node selector, tolerations; its runtime image), so the evaluator runs on the hardware
the model is served on. It is named `<evaluation>-eval` in the Evaluation's namespace and
annotated with the run (the Evaluation's generation) it was rendered for. No retries (a run
is cheap to start again; a failure is reported), the Ray cluster goes when the job ends, the
RayJob after `TTL_AFTER_FINISHED_S`. Claims named by pvc:// URIs (dataset, base models,
adapters) are mounted read-only on every pod. The submitter pod is the FineTuneJobs' one
(`rayjob.submitter_pod_template`): its log carries the evaluator's result lines.
"""

from __future__ import annotations

from typing import Any, Final

from tramontane_api.v1alpha1 import Evaluation, ModelDeployment
from tramontane_operator.placement import ClusterView
from tramontane_workers.contract.eval_config import EvalConfig, EvalTarget, entrypoint

from .labels import child_labels
from .rayjob import HEAD_PORTS, TTL_AFTER_FINISHED_S, submitter_pod_template, worker_group
from .rayservice import RAY_API_VERSION, BuildSettings, child_metadata, head_group, pod_tolerations
from .validation_job import (
    DEADLINE_S,
    MAX_FILE_BYTES,
    REPORT_MODULE,
    TERMINATION_LOG,
    build_dataset_job,
    suffixed_name,
)
from .volumes import ClaimUse, pod_volumes

RUN_ANNOTATION: Final = "tramontane.dev/run"
_SUFFIX: Final = "-eval"
# KubeRay derives its RayCluster's and submitter Job's names from the RayJob's.
_MAX_RAYJOB_NAME: Final = 52

__all__ = [
    "DEADLINE_S",
    "RUN_ANNOTATION",
    "build_eval_config",
    "build_eval_rayjob",
    "build_eval_validation_job",
    "eval_claim_uses",
    "eval_rayjob_name",
    "eval_validation_job_name",
]


def eval_rayjob_name(ev: Evaluation) -> str:
    """`<evaluation>-eval` (a FineTuneJob of the same name keeps its own RayJob name)."""
    return suffixed_name(ev.metadata.name, _SUFFIX, _MAX_RAYJOB_NAME)


def eval_validation_job_name(ev: Evaluation) -> str:
    return suffixed_name(eval_rayjob_name(ev), "-validate")


def build_eval_config(
    ev: Evaluation, target: EvalTarget, baseline: EvalTarget | None, md: ModelDeployment
) -> EvalConfig:
    """The evaluator's input for the current run of `ev`; `md` is the target's
    ModelDeployment (context length and GPU use)."""
    spec = ev.spec
    gpu = md.spec.resources.gpu
    return EvalConfig(
        name=ev.metadata.name,
        dataset_uri=spec.dataset.uri,
        target=target,
        baseline=baseline,
        metrics=[m.name for m in spec.metrics],
        max_tokens=spec.generation.max_tokens,
        batch_size=spec.generation.batch_size,
        max_samples=spec.max_samples,
        failing_samples=spec.failing_samples,
        max_model_len=md.spec.runtime.max_model_len,
        use_gpu=gpu is not None and gpu.count > 0,
    )


def eval_claim_uses(config: EvalConfig) -> list[ClaimUse]:
    """Every URI the evaluation pods read: the dataset, the base models and the adapters."""
    uses = [ClaimUse("spec.dataset.uri", config.dataset_uri)]
    for where, model in (("spec.target", config.target), ("spec.baseline", config.baseline)):
        if model is None:
            continue
        uses.append(ClaimUse(f"{where} (its ModelDeployment's model source)", model.base_model_uri))
        if model.adapter_uri is not None:
            uses.append(ClaimUse(f"{where} adapter", model.adapter_uri))
    return uses


def build_eval_rayjob(
    ev: Evaluation,
    config: EvalConfig,
    md: ModelDeployment,
    cluster: ClusterView,
    settings: BuildSettings,
    tenant: str | None,
) -> dict[str, Any]:
    """The RayJob of `ev`'s current run in `cluster`. ValueError names a bad field."""
    res = md.spec.resources
    gpus = res.gpu.count if res.gpu is not None else 0
    image = md.spec.runtime.image or settings.image_for(gpus)
    labels = child_labels(ev, cluster.name, tenant)
    metadata = {**child_metadata(ev, cluster, settings, labels), "name": eval_rayjob_name(ev)}
    metadata["annotations"] = {RUN_ANNOTATION: str(ev.metadata.generation or 0)}
    volumes = pod_volumes(eval_claim_uses(config))
    workers = worker_group(
        image,
        1,
        res.cpu,
        res.memory,
        gpus,
        labels,
        volumes,
        f"ModelDeployment {md.metadata.name}: spec.resources.cpu",
        pod_tolerations(md),
        settings,
        res.node_selector,
        cluster.gpu_nodes(res.gpu.type if res.gpu is not None else None),
    )
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": entrypoint(config),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "backoffLimit": 0,
            "rayClusterSpec": {
                "headGroupSpec": head_group(image, settings, labels, HEAD_PORTS, volumes),
                "workerGroupSpecs": [workers],
            },
            "submitterPodTemplate": submitter_pod_template(image, labels, settings),
        },
    }


def build_eval_validation_job(
    ev: Evaluation, cluster: ClusterView, settings: BuildSettings, tenant: str | None
) -> dict[str, Any]:
    """The Job validating `ev`'s dataset in `cluster` (the FineTuneJobs' validation Job: the
    workers' dataset rules for evaluation datasets, a report in the termination message)."""
    uri = ev.spec.dataset.uri
    command = [
        "python", "-m", REPORT_MODULE, "--evaluation", "--training", uri,
        "--max-file-bytes", str(MAX_FILE_BYTES), "--output", TERMINATION_LOG,
    ]  # fmt: skip
    uses = [ClaimUse("spec.dataset.uri", uri)]
    name = eval_validation_job_name(ev)
    return build_dataset_job(ev, name, command, uses, cluster, settings, tenant)
